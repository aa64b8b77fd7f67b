//! Device posture: OS release, kernel, hostname, root-disk encryption and host
//! firewall of the machine the agent runs on. Every probe is best effort: a
//! failure yields an empty string or `None`, never a panic or an error. File
//! reads are relative to a root so tests can use a fake tree. `collect` can
//! take seconds (tools are killed after [`TOOL_TIMEOUT`]): call it from a
//! blocking thread.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::Bytes;
use std::thread;
use std::time::{Duration, Instant};

mod changes;
#[cfg(test)]
mod tests;

pub use changes::FirewallCache;

/// What the daemon reports about the machine it runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PostureReport {
    /// Operating system family; always `"linux"` from this collector.
    pub os: String,
    /// `VERSION_ID` from os-release, e.g. `"12"`; empty if unknown.
    pub os_version: String,
    /// `PRETTY_NAME` from os-release, e.g. `"Debian GNU/Linux 12 (bookworm)"`;
    /// empty if unknown.
    pub os_name: String,
    /// Kernel release from `/proc/sys/kernel/osrelease`; empty if unknown.
    pub kernel: String,
    /// Version of the ztmesh daemon, as passed in by the caller.
    pub daemon_version: String,
    /// Host name from `/proc/sys/kernel/hostname`; empty if unknown.
    pub hostname: String,
    /// Whether the root filesystem sits on a dm-crypt device (directly or
    /// below LVM, RAID, ...). `None` when it could not be told: containers,
    /// network or in-memory root filesystems, unreadable sysfs.
    pub disk_encrypted: Option<bool>,
    /// Whether an input-path packet filter is active (iptables or nftables).
    /// `None` when it could not be told: tools missing, failing or too slow.
    pub firewall: Option<bool>,
}

/// How long one external tool (`iptables`, `nft`) may run before it is killed.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes read from one tool's output; a tool writing more times out.
const TOOL_OUTPUT_LIMIT: u64 = 16 << 20;

/// Deepest block-device stack followed below the root device (cycle guard).
const MAX_STACK_DEPTH: usize = 16;

/// Most block devices visited in one walk, so a fan-out cannot explode.
const MAX_STACK_VISITS: u32 = 256;

/// Deepest JSON nesting accepted from `nft -j`; real output stays near 10.
const MAX_JSON_DEPTH: usize = 128;

/// Collects the posture of the running system (files under `/`, firewall
/// probed with [`detect_firewall`]).
pub fn collect(daemon_version: &str) -> PostureReport {
    collect_from(Path::new("/"), daemon_version, &detect_firewall)
}

/// [`collect`], with the firewall probed only when `cache` says it may
/// have changed (the probe starts `nft` and `iptables`).
pub fn collect_cached(
    daemon_version: &str,
    cache: &std::sync::Mutex<FirewallCache>,
) -> PostureReport {
    collect_from(Path::new("/"), daemon_version, &|| match cache.lock() {
        Ok(mut cache) => cache.check(&detect_firewall),
        Err(_) => detect_firewall(),
    })
}

/// Collects the posture with every file read relative to `root` (so `root`
/// can be a fake tree in tests) and the firewall state taken from `firewall`.
pub fn collect_from(
    root: &Path,
    daemon_version: &str,
    firewall: &dyn Fn() -> Option<bool>,
) -> PostureReport {
    let release = read_os_release(root);
    let field = |key: &str| release.get(key).cloned().unwrap_or_default();
    PostureReport {
        os: "linux".to_owned(),
        os_version: field("VERSION_ID"),
        os_name: field("PRETTY_NAME"),
        kernel: read_trimmed(&root.join("proc/sys/kernel/osrelease")),
        daemon_version: daemon_version.to_owned(),
        hostname: read_trimmed(&root.join("proc/sys/kernel/hostname")),
        disk_encrypted: root_disk_encrypted(root),
        firewall: firewall(),
    }
}

/// Probes the running system for an active input-path packet filter.
///
/// `Some(true)` if iptables (legacy or nft-backed, IPv4 or IPv6) has an INPUT
/// policy of DROP/REJECT or any INPUT rule, or if nftables has a filter chain
/// on the input hook with policy drop or at least one rule. `Some(false)` if
/// at least one tool ran and none found such a filter; `None` if no tool
/// could tell (missing, not permitted, timed out). Needs CAP_NET_ADMIN.
pub fn detect_firewall() -> Option<bool> {
    let probes: [fn() -> Option<bool>; 3] = [
        || iptables_probe("iptables", "/proc/net/ip_tables_names"),
        || iptables_probe("ip6tables", "/proc/net/ip6_tables_names"),
        || {
            run_tool("nft", &["-j", "list", "ruleset"])
                .and_then(|out| nft_input_filter_active(&out))
        },
    ];
    let mut verdict = None;
    for probe in probes {
        match probe() {
            Some(true) => return Some(true),
            Some(false) => verdict = Some(false),
            None => {}
        }
    }
    verdict
}

/// Reads `etc/os-release`, or `usr/lib/os-release` if the first is missing
/// (os-release(5)); empty map if neither can be read.
fn read_os_release(root: &Path) -> HashMap<String, String> {
    read_text(&root.join("etc/os-release"))
        .or_else(|| read_text(&root.join("usr/lib/os-release")))
        .map(|text| parse_os_release(&text))
        .unwrap_or_default()
}

/// Parses `KEY=value` lines, skipping blanks, comments and malformed lines.
fn parse_os_release(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            let key = key.trim();
            let valid =
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            valid.then(|| (key.to_owned(), unquote(value)))
        })
        .collect()
}

/// Undoes shell quoting as os-release(5) uses it: single quotes are literal;
/// inside double quotes a backslash escapes `$`, backtick, `"` and `\` (and is
/// kept before anything else); outside quotes it escapes any character.
fn unquote(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.trim().chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => out.extend(chars.by_ref().take_while(|&c| c != '\'')),
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(e @ ('$' | '`' | '"' | '\\')) => out.push(e),
                            Some(e) => out.extend(['\\', e]),
                            None => out.push('\\'),
                        },
                        c => out.push(c),
                    }
                }
            }
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

/// Whether the root filesystem's block device is, or sits on, dm-crypt.
fn root_disk_encrypted(root: &Path) -> Option<bool> {
    let mountinfo = read_text(&root.join("proc/self/mountinfo"))?;
    // proc(5): field 3 is major:minor, field 5 the mount point, and the fs
    // type and source follow "-". The last "/" line is the one on top.
    let line = mountinfo
        .lines()
        .rfind(|line| line.split_whitespace().nth(4) == Some("/"))?;
    let mut fields = line.split_whitespace();
    let (major, minor) = fields.nth(2)?.split_once(':')?;
    let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
    let mut tail = fields.skip_while(|field| *field != "-").skip(1);
    let (fstype, source) = (tail.next()?, tail.next().unwrap_or_default());
    if is_virtual_fs(fstype) {
        return None;
    }
    let class_block = root.join("sys/class/block");
    let device = if major != 0 {
        root.join(format!("sys/dev/block/{major}:{minor}"))
    } else if fstype == "btrfs" {
        // btrfs reports an anonymous 0:N device; its source names the real one.
        device_by_source(root, &class_block, source)?
    } else {
        return None; // Not backed by a block device we can name (containers, zfs).
    };
    stack_encrypted(&class_block, &device, 0, &mut { MAX_STACK_VISITS })
}

/// Filesystems that are not stored on a local block device of their own.
fn is_virtual_fs(fstype: &str) -> bool {
    matches!(
        fstype,
        "overlay" | "tmpfs" | "ramfs" | "rootfs" | "9p" | "virtiofs" | "fuse" | "cifs" | "smb3"
    ) || fstype.starts_with("nfs")
        || fstype.starts_with("fuse.")
}

/// Finds the sysfs directory of a mount source such as `/dev/nvme0n1p3` or
/// `/dev/mapper/luks-…` (a symlink to `/dev/dm-N`, named `dm-N` in sysfs).
fn device_by_source(root: &Path, class_block: &Path, source: &str) -> Option<PathBuf> {
    let node = root.join(source.strip_prefix('/')?);
    let real = fs::canonicalize(&node).unwrap_or(node);
    let candidate = class_block.join(real.file_name()?);
    candidate.is_dir().then_some(candidate)
}

/// `Some(true)` if `device` or anything below it (through sysfs `slaves/`,
/// resolved via `class_block`) is a dm-crypt device, `Some(false)` if the
/// whole stack was walked without finding one, `None` if part of it could not
/// be read or the stack is too deep or wide (a cycle). A plain partition has
/// no `slaves/`, so it ends the walk.
fn stack_encrypted(
    class_block: &Path,
    device: &Path,
    depth: usize,
    budget: &mut u32,
) -> Option<bool> {
    if depth > MAX_STACK_DEPTH || *budget == 0 || !device.is_dir() {
        return None;
    }
    *budget -= 1;
    if is_crypt_uuid(&read_trimmed(&device.join("dm/uuid"))) {
        return Some(true);
    }
    let mut verdict = Some(false);
    for entry in fs::read_dir(device.join("slaves"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let by_class = class_block.join(entry.file_name());
        let lower = if by_class.is_dir() {
            by_class
        } else {
            entry.path()
        };
        match stack_encrypted(class_block, &lower, depth + 1, budget) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => verdict = None,
        }
    }
    verdict
}

/// cryptsetup names its dm devices `CRYPT-<type>-…`; verity and integrity
/// devices use the same prefix but do not encrypt.
fn is_crypt_uuid(uuid: &str) -> bool {
    uuid.strip_prefix("CRYPT-").is_some_and(|kind| {
        !["VERITY-", "INTEGRITY-", "SUBDEV-"]
            .iter()
            .any(|other| kind.starts_with(other))
    })
}

/// Checks one iptables family. Listing is skipped when the binary is legacy
/// iptables and the kernel has no legacy `filter` table (there is then no
/// legacy input filter, and listing would create the table); nft-backed
/// iptables keeps its tables out of `names_file` and is always listed.
fn iptables_probe(binary: &str, names_file: &str) -> Option<bool> {
    let has_legacy_filter = read_text(Path::new(names_file))
        .is_some_and(|names| names.lines().any(|name| name.trim() == "filter"));
    if !has_legacy_filter && !run_tool(binary, &["-V"])?.contains("nf_tables") {
        return Some(false);
    }
    run_tool(binary, &["-S", "INPUT"]).map(|rules| iptables_input_active(&rules))
}

/// Whether `iptables -S INPUT` output shows a DROP/REJECT policy or any rule.
fn iptables_input_active(rules: &str) -> bool {
    rules.lines().any(|line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("-P"), Some("INPUT"), Some(policy)) => matches!(policy, "DROP" | "REJECT"),
            (Some("-A"), Some("INPUT"), _) => true,
            _ => false,
        }
    })
}

/// Whether `nft -j list ruleset` output has a filter chain on the input hook
/// with policy drop or at least one rule (matched by family, table and chain
/// name). `None` if the output is not the JSON we expect.
fn nft_input_filter_active(json: &str) -> Option<bool> {
    let document = JsonParser::parse(json)?;
    let Some(Json::Array(items)) = document.get("nftables") else {
        return None;
    };
    let rules: Vec<&Json> = items.iter().filter_map(|item| item.get("rule")).collect();
    let in_chain = |rule: &Json, chain: &Json| {
        ["family", "table"]
            .iter()
            .all(|key| rule.text(key) == chain.text(key))
            && rule.text("chain") == chain.text("name")
    };
    let active = items
        .iter()
        .filter_map(|item| item.get("chain"))
        .filter(|chain| chain.text("hook") == Some("input"))
        .filter(|chain| chain.text("type").is_none_or(|kind| kind == "filter"))
        .any(|chain| {
            chain.text("policy") == Some("drop") || rules.iter().any(|rule| in_chain(rule, chain))
        });
    Some(active)
}

/// Runs a tool found on PATH or in the usual sbin directories and returns its
/// stdout if it exits successfully within [`TOOL_TIMEOUT`]; kills it otherwise.
fn run_tool(name: &str, args: &[&str]) -> Option<String> {
    let program = find_tool(name)?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Drain stdout on a thread: a tool blocked on a full pipe would never exit.
    let reader = child.stdout.take().and_then(|stdout| {
        thread::Builder::new()
            .spawn(move || {
                let mut output = Vec::new();
                let _ = stdout.take(TOOL_OUTPUT_LIMIT).read_to_end(&mut output);
                output
            })
            .ok()
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) if reader.is_some() => break Some(status),
            Ok(None) if reader.is_some() && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let output = reader?.join().ok()?;
    status
        .filter(|status| status.success())
        .map(|_| String::from_utf8_lossy(&output).into_owned())
}

/// Looks for an executable file named `name` on PATH, then in the sbin and bin
/// directories a daemon's restricted PATH may lack.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A parsed JSON value; only strings and structure matter here.
enum Json {
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
    /// A number, `true`, `false` or `null`.
    Scalar,
}

impl Json {
    /// The value of `key` if this is an object that has it.
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(name, _)| name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string value of `key` if this is an object that has one.
    fn text(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Json::Str(text)) => Some(text),
            _ => None,
        }
    }
}

/// A small, lenient recursive-descent JSON parser over untrusted bytes.
struct JsonParser<'a> {
    bytes: Peekable<Bytes<'a>>,
}

impl JsonParser<'_> {
    /// Parses `text` as one JSON value followed only by whitespace.
    fn parse(text: &str) -> Option<Json> {
        let mut parser = JsonParser {
            bytes: text.bytes().peekable(),
        };
        let value = parser.value(0)?;
        parser.skip_whitespace();
        parser.bytes.next().is_none().then_some(value)
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        self.skip_whitespace();
        let open = *self.bytes.peek()?;
        let close = match open {
            b'"' => return self.string().map(Json::Str),
            b'{' => b'}',
            b'[' => b']',
            _ => {
                let mut scalar = None;
                while self
                    .bytes
                    .next_if(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
                    .is_some()
                {
                    scalar = Some(Json::Scalar);
                }
                return scalar;
            }
        };
        if depth >= MAX_JSON_DEPTH {
            return None;
        }
        self.bytes.next();
        let mut members = Vec::new();
        while !self.eat(close) {
            if !members.is_empty() && !self.eat(b',') {
                return None;
            }
            let mut key = String::new();
            if open == b'{' {
                self.skip_whitespace();
                key = self.string()?;
                self.eat(b':').then_some(())?;
            }
            members.push((key, self.value(depth + 1)?));
        }
        Some(match open {
            b'{' => Json::Object(members),
            _ => Json::Array(members.into_iter().map(|(_, value)| value).collect()),
        })
    }

    /// A string; escapes stay undecoded, as names are only compared with each
    /// other and the words we look for never need escaping.
    fn string(&mut self) -> Option<String> {
        self.bytes.next_if_eq(&b'"')?;
        let mut out = Vec::new();
        loop {
            match self.bytes.next()? {
                b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => out.extend([b'\\', self.bytes.next()?]),
                byte => out.push(byte),
            }
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        self.bytes.next_if_eq(&byte).is_some()
    }

    fn skip_whitespace(&mut self) {
        while self.bytes.next_if(u8::is_ascii_whitespace).is_some() {}
    }
}

/// Reads a file as text (lossy UTF-8); `None` if it cannot be read.
fn read_text(path: &Path) -> Option<String> {
    fs::read(path)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads a file and trims it; empty if it cannot be read.
fn read_trimmed(path: &Path) -> String {
    read_text(path)
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}
