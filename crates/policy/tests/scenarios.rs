//! Golden files for named scenarios: for each `scenarios/NAME.policy.toml`
//! with its `NAME.devices.toml`, every device's segments, peers and
//! compiled filter are rendered and compared with `NAME.golden` byte for
//! byte. `UPDATE_GOLDEN=1 cargo test -p ztmesh-policy --test scenarios`
//! rewrites them; review the diff before committing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use ztmesh_filter::{Action, FilterRule, Protocol};
use ztmesh_policy::{Device, Policy, Posture, format_utc};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    /// Instants (RFC 3339, UTC) to compile at.
    at: Vec<String>,
    devices: Vec<DeviceFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    name: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    addresses: Vec<String>,
    #[serde(default)]
    posture: Option<PostureFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostureFile {
    os: String,
    daemon_version: String,
    #[serde(default)]
    disk_encrypted: Option<bool>,
    #[serde(default)]
    firewall: Option<bool>,
    #[serde(default)]
    public_ip: Option<String>,
}

fn unix(text: &str) -> i64 {
    humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("`{text}`: {e}; write 2026-11-23T09:00:00Z"))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn devices(scenario: &Scenario) -> Vec<Device> {
    scenario
        .devices
        .iter()
        .map(|d| Device {
            id: d.name.clone(),
            name: d.name.clone(),
            user: d.user.clone(),
            groups: d.groups.clone(),
            tags: d.tags.clone(),
            addresses: d.addresses.iter().map(|a| a.parse().unwrap()).collect(),
            posture: d.posture.as_ref().map(|p| Posture {
                os: p.os.clone(),
                daemon_version: p.daemon_version.clone(),
                disk_encrypted: p.disk_encrypted,
                firewall: p.firewall,
                public_ip: p.public_ip.as_ref().map(|ip| ip.parse().unwrap()),
                ..Posture::default()
            }),
        })
        .collect()
}

fn rule_line(rule: &FilterRule) -> String {
    let action = match (rule.action, rule.monitor) {
        (Action::Allow, _) => "allow",
        (Action::Deny, false) => "deny",
        (Action::Deny, true) => "monitor-deny",
    };
    let protocol = match rule.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::Any => "any",
    };
    let ports = if rule.ports.is_empty() {
        "*".to_owned()
    } else {
        rule.ports
            .iter()
            .map(|p| {
                if p.start == p.end {
                    p.start.to_string()
                } else {
                    format!("{}-{}", p.start, p.end)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let nets = |list: &[ipnet::IpNet]| {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{action} `{}` {protocol}/{ports} from {} to {}",
        rule.name,
        nets(&rule.sources),
        nets(&rule.destinations)
    )
}

fn render(policy: &Policy, scenario: &Scenario) -> String {
    let devices = devices(scenario);
    let mut out = String::new();
    for warning in policy.warnings() {
        writeln!(out, "{warning}").unwrap();
    }
    for at in &scenario.at {
        let now = unix(at);
        writeln!(out, "\n== at {}", format_utc(now)).unwrap();
        for device in &devices {
            let segments = policy.segments_of(device);
            let peers = policy.peers_of(&devices, &device.id, now);
            let filter = policy.compile(&devices, &device.id, 1, now);
            writeln!(out, "device {}", device.name).unwrap();
            writeln!(out, "  segments: {}", list(&segments)).unwrap();
            writeln!(out, "  peers: {}", list(&peers)).unwrap();
            for check in policy.posture_checks(device).iter().filter(|c| !c.passed) {
                writeln!(
                    out,
                    "  posture fails: {}/{} {}: {}",
                    check.segment, check.posture, check.check, check.detail
                )
                .unwrap();
            }
            if filter.rules.is_empty() {
                writeln!(out, "  filter: (nothing; default deny)").unwrap();
            }
            for (i, rule) in filter.rules.iter().enumerate() {
                writeln!(out, "  {:>2}. {}", i + 1, rule_line(rule)).unwrap();
            }
        }
    }
    out
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

#[test]
fn named_scenarios_match_their_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut names: Vec<String> = std::fs::read_dir(scenario_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".policy.toml").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 5, "scenarios: {names:?}");
    let mut mismatched = Vec::new();
    for name in &names {
        let dir = scenario_dir();
        let text = std::fs::read_to_string(dir.join(format!("{name}.policy.toml"))).unwrap();
        let policy = Policy::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let scenario: Scenario = toml::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.devices.toml"))).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}.devices.toml: {e}"));
        let rendered = format!("# scenario {name}\n{}", render(&policy, &scenario));
        let golden = dir.join(format!("{name}.golden"));
        if update {
            std::fs::write(&golden, &rendered).unwrap();
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(rendered.as_str()) {
            eprintln!("--- {name}: got\n{rendered}");
            mismatched.push(name.clone());
        }
    }
    assert!(
        mismatched.is_empty(),
        "these scenarios differ from their golden files (rerun with UPDATE_GOLDEN=1 after checking): {mismatched:?}"
    );
}
