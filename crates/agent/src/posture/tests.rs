//! Tests for the posture collector: os-release parsing and root-disk
//! encryption against fake `/etc`, `/proc` and `/sys` trees laid out like the
//! real ones (relative symlinks), plus the iptables and nft output parsers.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// A unique directory under the system temp dir, removed on drop.
struct FakeRoot(PathBuf);

impl FakeRoot {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "posture-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(unique);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        FakeRoot(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, relative: &str, contents: &str) {
        let path = self.0.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn mkdir(&self, relative: &str) {
        fs::create_dir_all(self.0.join(relative)).unwrap();
    }

    /// Symlink `link` to `target` (both relative to the root) with a relative
    /// target, as sysfs does.
    fn link(&self, link: &str, target: &str) {
        let path = self.0.join(link);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let ups = "../".repeat(link.matches('/').count());
        std::os::unix::fs::symlink(format!("{ups}{target}"), path).unwrap();
    }

    /// A block device at `devpath` (below `sys/devices`), reachable through
    /// `sys/dev/block/MAJ:MIN` and `sys/class/block/NAME`.
    fn block(&self, devpath: &str, dev: &str) {
        let dir = format!("sys/devices/{devpath}");
        let name = devpath.rsplit('/').next().unwrap();
        self.write(&format!("{dir}/dev"), &format!("{dev}\n"));
        self.link(&format!("sys/dev/block/{dev}"), &dir);
        self.link(&format!("sys/class/block/{name}"), &dir);
    }

    /// A plain disk `sda` (8:0) with partitions `sda1` (8:1) and `sda2` (8:2).
    fn plain_disk(&self) {
        let disk = "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda";
        self.block(disk, "8:0");
        self.mkdir(&format!("sys/devices/{disk}/slaves"));
        for (part, dev) in [("sda1", "8:1"), ("sda2", "8:2")] {
            self.block(&format!("{disk}/{part}"), dev);
            self.write(&format!("sys/devices/{disk}/{part}/partition"), "1\n");
        }
    }

    /// A dm device `dm-N` (254:N) with the given dm uuid, stacked on `slaves`.
    fn dm(&self, n: u32, uuid: &str, slaves: &[&str]) {
        let dir = format!("virtual/block/dm-{n}");
        self.block(&dir, &format!("254:{n}"));
        self.write(&format!("sys/devices/{dir}/dm/uuid"), &format!("{uuid}\n"));
        self.write(&format!("sys/devices/{dir}/dm/name"), &format!("vol{n}\n"));
        self.mkdir(&format!("sys/devices/{dir}/slaves"));
        for slave in slaves {
            let target = fs::read_link(self.0.join(format!("sys/class/block/{slave}"))).unwrap();
            let target = target.to_str().unwrap().trim_start_matches("../");
            self.link(&format!("sys/devices/{dir}/slaves/{slave}"), target);
        }
    }

    /// A mountinfo whose root mount is `dev` with type `fstype`, under a few
    /// unrelated mounts.
    fn root_mount(&self, dev: &str, fstype: &str, source: &str) {
        let mountinfo = format!(
            "22 27 0:21 / /proc rw,relatime shared:13 - proc proc rw\n\
             27 1 {dev} / / rw,relatime shared:1 - {fstype} {source} rw\n\
             23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n\
             30 27 8:1 / /boot rw - ext4 /dev/sda1 rw\n"
        );
        self.write("proc/self/mountinfo", &mountinfo);
    }

    fn collect(&self) -> PostureReport {
        collect_from(self.path(), "1.2.3", &|| None)
    }
}

impl Drop for FakeRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn os_release_quoted_values() {
    let root = FakeRoot::new("osrel-quoted");
    root.write(
        "etc/os-release",
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
         VERSION_ID=\"12\"\nID=debian\n",
    );
    let report = root.collect();
    assert_eq!(report.os_version, "12");
    assert_eq!(report.os_name, "Debian GNU/Linux 12 (bookworm)");
}

#[test]
fn os_release_unquoted_single_quoted_and_comments() {
    let root = FakeRoot::new("osrel-unquoted");
    root.write(
        "etc/os-release",
        "# comment\n\nVERSION_ID=3.19.1\nPRETTY_NAME='Alpine Linux v3.19'\nnot a pair\n",
    );
    let report = root.collect();
    assert_eq!(report.os_version, "3.19.1");
    assert_eq!(report.os_name, "Alpine Linux v3.19");
}

#[test]
fn os_release_escapes_in_double_quotes() {
    let text = r#"PRETTY_NAME="My \"Box\" \$HOME \\ \x"
NAME=a\ b
"#;
    let release = parse_os_release(text);
    assert_eq!(release["PRETTY_NAME"], r#"My "Box" $HOME \ \x"#);
    assert_eq!(release["NAME"], "a b");
}

#[test]
fn os_release_falls_back_to_usr_lib() {
    let root = FakeRoot::new("osrel-fallback");
    root.write(
        "usr/lib/os-release",
        "VERSION_ID=\"40\"\nPRETTY_NAME=\"Fedora Linux 40\"\n",
    );
    let report = root.collect();
    assert_eq!(report.os_version, "40");
    assert_eq!(report.os_name, "Fedora Linux 40");
}

#[test]
fn missing_files_give_empty_strings_and_none() {
    let root = FakeRoot::new("empty");
    let report = root.collect();
    let expected = PostureReport {
        os: "linux".to_owned(),
        daemon_version: "1.2.3".to_owned(),
        ..PostureReport::default()
    };
    assert_eq!(report, expected);
}

#[test]
fn kernel_hostname_and_firewall_are_reported() {
    let root = FakeRoot::new("kernel");
    root.write("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n");
    root.write("proc/sys/kernel/hostname", "laptop-7\n");
    let report = collect_from(root.path(), "0.9.0", &|| Some(true));
    assert_eq!(report.kernel, "6.1.0-18-amd64");
    assert_eq!(report.hostname, "laptop-7");
    assert_eq!(report.daemon_version, "0.9.0");
    assert_eq!(report.firewall, Some(true));
}

#[test]
fn plain_partition_root_is_not_encrypted() {
    let root = FakeRoot::new("plain");
    root.plain_disk();
    root.root_mount("8:2", "ext4", "/dev/sda2");
    assert_eq!(root.collect().disk_encrypted, Some(false));
}

#[test]
fn plain_directories_instead_of_symlinks_work() {
    let root = FakeRoot::new("plain-dirs");
    root.write("sys/dev/block/259:2/partition", "2\n");
    root.root_mount("259:2", "xfs", "/dev/nvme0n1p2");
    assert_eq!(root.collect().disk_encrypted, Some(false));
}

#[test]
fn luks_root_is_encrypted() {
    let root = FakeRoot::new("luks");
    root.plain_disk();
    root.dm(
        0,
        "CRYPT-LUKS2-0123456789abcdef0123456789abcdef-luks-root",
        &["sda2"],
    );
    root.root_mount("254:0", "ext4", "/dev/mapper/vol0");
    assert_eq!(root.collect().disk_encrypted, Some(true));
}

#[test]
fn lvm_on_luks_root_is_encrypted() {
    let root = FakeRoot::new("lvm-luks");
    root.plain_disk();
    root.dm(
        0,
        "CRYPT-LUKS2-0123456789abcdef0123456789abcdef-sda2_crypt",
        &["sda2"],
    );
    root.dm(
        1,
        "LVM-abcdefABCDEF0123456789abcdefABCDEF0123456789abcdefABCDEF0123",
        &["dm-0"],
    );
    root.root_mount("254:1", "ext4", "/dev/mapper/vg-root");
    assert_eq!(root.collect().disk_encrypted, Some(true));
}

#[test]
fn lvm_on_plain_partition_is_not_encrypted() {
    let root = FakeRoot::new("lvm-plain");
    root.plain_disk();
    root.dm(0, "LVM-abcdef", &["sda2"]);
    root.root_mount("254:0", "ext4", "/dev/mapper/vg-root");
    assert_eq!(root.collect().disk_encrypted, Some(false));
}

#[test]
fn verity_root_is_not_encrypted() {
    let root = FakeRoot::new("verity");
    root.plain_disk();
    root.dm(0, "CRYPT-VERITY-0123456789abcdef-usr", &["sda2"]);
    root.root_mount("254:0", "erofs", "/dev/mapper/usr");
    assert_eq!(root.collect().disk_encrypted, Some(false));
}

#[test]
fn btrfs_root_is_found_through_its_source_device() {
    let root = FakeRoot::new("btrfs");
    root.plain_disk();
    root.dm(0, "CRYPT-LUKS2-0123456789abcdef-luks-root", &["sda2"]);
    root.write("dev/dm-0", "");
    root.link("dev/mapper/luks-root", "dev/dm-0");
    root.root_mount("0:31", "btrfs", "/dev/mapper/luks-root");
    assert_eq!(root.collect().disk_encrypted, Some(true));
    root.root_mount("0:31", "btrfs", "/dev/sda2");
    assert_eq!(root.collect().disk_encrypted, Some(false));
}

#[test]
fn last_root_mount_wins() {
    let root = FakeRoot::new("overmount");
    root.plain_disk();
    root.dm(0, "CRYPT-LUKS2-0123-root", &["sda2"]);
    let under = "27 1 8:2 / / rw - ext4 /dev/sda2 rw\n";
    let over = "40 27 254:0 / / rw - ext4 /dev/mapper/vol0 rw\n";
    root.write("proc/self/mountinfo", &format!("{under}{over}"));
    assert_eq!(root.collect().disk_encrypted, Some(true));
    root.write("proc/self/mountinfo", &format!("{over}{under}"));
    assert_eq!(root.collect().disk_encrypted, Some(false));
}

#[test]
fn container_and_network_roots_are_unknown() {
    let root = FakeRoot::new("virtual");
    root.plain_disk();
    for (dev, fstype) in [
        ("0:52", "overlay"),
        ("0:30", "tmpfs"),
        ("0:40", "9p"),
        ("0:41", "virtiofs"),
        ("0:42", "nfs4"),
        ("0:43", "fuse.sshfs"),
        ("0:44", "ext4"),
        ("0:45", "zfs"),
        ("8:2", "overlay"),
    ] {
        root.root_mount(dev, fstype, "none");
        assert_eq!(root.collect().disk_encrypted, None, "{dev} {fstype}");
    }
}

#[test]
fn missing_mountinfo_or_sysfs_is_unknown() {
    let root = FakeRoot::new("missing");
    assert_eq!(root.collect().disk_encrypted, None);
    root.root_mount("8:2", "ext4", "/dev/sda2");
    assert_eq!(root.collect().disk_encrypted, None);
    root.write(
        "proc/self/mountinfo",
        "garbage\n27 1 x:y / / rw - ext4 /dev/sda2 rw\n",
    );
    assert_eq!(root.collect().disk_encrypted, None);
}

#[test]
fn slave_cycle_is_unknown_not_a_hang() {
    let root = FakeRoot::new("cycle");
    root.block("virtual/block/dm-0", "254:0");
    root.block("virtual/block/dm-1", "254:1");
    root.link(
        "sys/devices/virtual/block/dm-0/slaves/dm-1",
        "sys/devices/virtual/block/dm-1",
    );
    root.link(
        "sys/devices/virtual/block/dm-1/slaves/dm-0",
        "sys/devices/virtual/block/dm-0",
    );
    root.root_mount("254:0", "ext4", "/dev/dm-0");
    assert_eq!(root.collect().disk_encrypted, None);
}

#[test]
fn iptables_rules_are_recognised() {
    let open = "-P INPUT ACCEPT\n";
    assert!(!iptables_input_active(open));
    assert!(!iptables_input_active(""));
    assert!(iptables_input_active("-P INPUT DROP\n"));
    assert!(iptables_input_active(
        "-P INPUT ACCEPT\n-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp --dport 22 -j ACCEPT\n"
    ));
    assert!(!iptables_input_active(
        "# Warning: iptables-legacy tables present, use iptables-legacy to see them\n\
         -P INPUT ACCEPT\n-A FORWARD -j DOCKER-USER\n-N INPUT_extra\n"
    ));
}

/// A trimmed `nft -j list ruleset` as produced by nftables 1.0.
const NFT_DEBIAN_DEFAULT: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "filter", "handle": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}, {"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}, {"chain": {"family": "inet", "table": "filter", "name": "output", "handle": 3, "type": "filter", "hook": "output", "prio": 0, "policy": "accept"}}]}"#;

const NFT_INPUT_RULE: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "filter", "handle": 1}}, {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 4, "comment": "say \"hi\" {", "expr": [{"match": {"op": "==", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}}, {"rule": {"family": "inet", "table": "filter", "chain": "input", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}}]}"#;

#[test]
fn nft_ruleset_without_input_filter_is_inactive() {
    assert_eq!(nft_input_filter_active(NFT_DEBIAN_DEFAULT), Some(false));
    let empty = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}"#;
    assert_eq!(nft_input_filter_active(empty), Some(false));
}

#[test]
fn nft_input_rule_or_drop_policy_is_active() {
    assert_eq!(nft_input_filter_active(NFT_INPUT_RULE), Some(true));
    let drop = NFT_DEBIAN_DEFAULT.replacen(r#""policy": "accept""#, r#""policy": "drop""#, 1);
    assert_eq!(nft_input_filter_active(&drop), Some(true));
    let pretty = NFT_INPUT_RULE.replace(", ", ",\n    ");
    assert_eq!(nft_input_filter_active(&pretty), Some(true));
}

#[test]
fn nft_rules_elsewhere_do_not_count() {
    let other_chain = NFT_INPUT_RULE.replace(r#""chain": "input""#, r#""chain": "forward""#);
    assert_eq!(nft_input_filter_active(&other_chain), Some(false));
    let other_table = NFT_INPUT_RULE.replace(
        r#""table": "filter", "chain""#,
        r#""table": "docker", "chain""#,
    );
    assert_eq!(nft_input_filter_active(&other_table), Some(false));
    let other_family = NFT_INPUT_RULE.replace(
        r#""family": "inet", "table": "filter", "chain""#,
        r#""family": "ip", "table": "filter", "chain""#,
    );
    assert_eq!(nft_input_filter_active(&other_family), Some(false));
    let nat = NFT_INPUT_RULE.replace(r#""type": "filter""#, r#""type": "nat""#);
    assert_eq!(nft_input_filter_active(&nat), Some(false));
}

#[test]
fn nft_garbage_is_unknown() {
    for bad in [
        "",
        "not json",
        "{\"nftables\": [",
        "{\"nftables\": {}}",
        "[1, 2",
        "{\"a\" 1}",
    ] {
        assert_eq!(nft_input_filter_active(bad), None, "{bad:?}");
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(nft_input_filter_active(&deep), None);
}

#[test]
fn tools_run_with_output_and_time_out() {
    assert_eq!(run_tool("echo", &["hi"]).as_deref(), Some("hi\n"));
    assert_eq!(run_tool("false", &[]), None);
    assert_eq!(run_tool("surely-not-a-tool-posture", &[]), None);
    let start = Instant::now();
    assert_eq!(run_tool("sleep", &["10"]), None);
    assert!(start.elapsed() < TOOL_TIMEOUT + Duration::from_secs(2));
    let big = run_tool("head", &["-c", "1000000", "/dev/zero"]);
    assert_eq!(big.map(|out| out.len()), Some(1_000_000));
}

#[test]
fn collect_on_this_machine_does_not_panic() {
    let start = Instant::now();
    let report = collect("0.1.0");
    println!("collect(\"0.1.0\") = {report:#?} in {:?}", start.elapsed());
}
