//! Reference-model property test: on random small policies and networks, the
//! compiled filter of each device, read the way the filter reads it (first
//! rule whose sources contain the peer and whose protocol/ports match, default
//! deny), decides every flow exactly as `Policy::evaluate` does on the
//! devices' one attribute. Also checks that `peers_of` is symmetric and
//! includes every device with an allowed flow.
//!
//! Segments may require the built-in `firewall` posture and devices may fail
//! it; the compiled filter is then checked against a small reference model of
//! membership and first-match rules, and against `evaluate` (which assumes
//! every posture passes) whenever both devices comply.

#![allow(clippy::unwrap_used, reason = "test helpers panic on broken fixtures")]

use std::fmt::Write as _;

use ipnet::IpNet;
use proptest::prelude::*;
use proptest::sample::subsequence;
use ztmesh_filter::{Action, FilterConfig, Protocol};
use ztmesh_policy::{Device, Endpoint, Policy, PortSpec, Posture};

const TAGS: [&str; 3] = ["t0", "t1", "t2"];
const USERS: [&str; 3] = ["u0@x.org", "u1@x.org", "u2@x.org"];
const NAMES: [&str; 2] = ["n0", "n1"];
/// Groups are fixed: g0 = u0, u1; g1 = u1, u2; g2 has no listed members
/// (directory only).
const GROUPS: [&str; 3] = ["g0", "g1", "g2"];
/// Members of each group in the policy's `[groups]` table.
const GROUP_USERS: [&[&str]; 3] = [&["u0@x.org", "u1@x.org"], &["u1@x.org", "u2@x.org"], &[]];
const SEGMENTS: [&str; 4] = ["s0", "s1", "s2", "s3"];
const PORT_SPECS: [&str; 11] = [
    "tcp/22",
    "tcp/80-90",
    "tcp/85",
    "tcp",
    "udp/53",
    "udp/50-60",
    "udp",
    "icmp",
    "any",
    "tcp/1-100",
    "tcp/30",
];
const FLOWS: [&str; 9] = [
    "tcp/22", "tcp/25", "tcp/85", "tcp/100", "tcp/443", "udp/53", "udp/55", "udp/1000", "icmp",
];

#[derive(Debug, Clone)]
struct SegmentSpec {
    tags: Vec<&'static str>,
    users: Vec<&'static str>,
    groups: Vec<&'static str>,
    devices: Vec<&'static str>,
    /// Requires the built-in `firewall` posture.
    firewall: bool,
}

#[derive(Debug, Clone)]
struct RuleSpec {
    from: Vec<&'static str>,
    to: Vec<&'static str>,
    ports: Vec<&'static str>,
    deny: bool,
}

/// A device's single attribute: (kind, pool index).
#[derive(Debug, Clone, Copy)]
enum Attribute {
    Tag(usize),
    User(usize),
    Name(usize),
    /// A device whose owner (listed nowhere in the policy) is in this
    /// directory group.
    DirGroup(usize),
}

fn segment() -> impl Strategy<Value = SegmentSpec> {
    (
        subsequence(TAGS.to_vec(), 0..=2),
        subsequence(USERS.to_vec(), 0..=1),
        subsequence(GROUPS.to_vec(), 0..=1),
        subsequence(NAMES.to_vec(), 0..=1),
        any::<bool>(),
    )
        .prop_map(|(tags, users, groups, devices, firewall)| SegmentSpec {
            tags,
            users,
            groups,
            devices,
            firewall,
        })
}

fn rule() -> impl Strategy<Value = RuleSpec> {
    (
        subsequence(SEGMENTS.to_vec(), 1..=2),
        subsequence(SEGMENTS.to_vec(), 1..=2),
        subsequence(PORT_SPECS.to_vec(), 1..=3),
        any::<bool>(),
    )
        .prop_map(|(from, to, ports, deny)| RuleSpec {
            from,
            to,
            ports,
            deny,
        })
}

fn attribute() -> impl Strategy<Value = Attribute> {
    prop_oneof![
        (0..TAGS.len()).prop_map(Attribute::Tag),
        (0..USERS.len()).prop_map(Attribute::User),
        (0..NAMES.len()).prop_map(Attribute::Name),
        (0..GROUPS.len()).prop_map(Attribute::DirGroup),
    ]
}

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn policy_text(segments: &[SegmentSpec], rules: &[RuleSpec]) -> String {
    let mut text = String::from(
        "[groups]\ng0 = [\"u0@x.org\", \"u1@x.org\"]\ng1 = [\"u1@x.org\", \"u2@x.org\"]\ng2 = []\n\n[segments]\n",
    );
    for (name, s) in SEGMENTS.iter().zip(segments) {
        let posture: &[&str] = if s.firewall { &["firewall"] } else { &[] };
        let _ = writeln!(
            text,
            "{name} = {{ tags = {}, users = {}, groups = {}, devices = {}, posture = {} }}",
            list(&s.tags),
            list(&s.users),
            list(&s.groups),
            list(&s.devices),
            list(posture)
        );
    }
    for (index, r) in rules.iter().enumerate() {
        let action = if r.deny { "deny" } else { "allow" };
        let _ = write!(
            text,
            "\n[[rules]]\nname = \"r{index}\"\nfrom = {}\nto = {}\nports = {}\naction = \"{action}\"\n",
            list(&r.from),
            list(&r.to),
            list(&r.ports)
        );
    }
    text
}

/// A device's posture report: passes `firewall`, or fails it one of three ways.
#[derive(Debug, Clone, Copy)]
enum Report {
    Firewall,
    NoFirewall,
    Unknown,
    Never,
}

impl Report {
    fn complies(self) -> bool {
        matches!(self, Report::Firewall)
    }

    fn posture(self) -> Option<Posture> {
        let firewall = match self {
            Report::Firewall => Some(true),
            Report::NoFirewall => Some(false),
            Report::Unknown => None,
            Report::Never => return None,
        };
        Some(Posture {
            firewall,
            ..Posture::default()
        })
    }
}

fn report() -> impl Strategy<Value = Report> {
    prop_oneof![
        3 => Just(Report::Firewall),
        1 => Just(Report::NoFirewall),
        1 => Just(Report::Unknown),
        1 => Just(Report::Never),
    ]
}

fn device(index: usize, attribute: Attribute, report: Report) -> Device {
    let mut device = Device {
        id: format!("d{index}"),
        name: format!("host-{index}"),
        user: None,
        tags: Vec::new(),
        addresses: vec![
            format!("100.64.0.{}/32", index + 1)
                .parse::<IpNet>()
                .unwrap(),
        ],
        groups: Vec::new(),
        posture: report.posture(),
    };
    match attribute {
        Attribute::Tag(i) => device.tags.push(TAGS[i].to_string()),
        Attribute::User(i) => device.user = Some(USERS[i].to_string()),
        Attribute::Name(i) => device.name = NAMES[i].to_string(),
        Attribute::DirGroup(i) => {
            device.user = Some("directory-user@x.org".to_string());
            device.groups.push(GROUPS[i].to_string());
        }
    }
    device
}

/// The reference membership: a selector matches the attribute, and the
/// device passes the segment's posture.
fn in_segment(segment: &SegmentSpec, attribute: Attribute, report: Report) -> bool {
    let selected = match attribute {
        Attribute::Tag(i) => segment.tags.contains(&TAGS[i]),
        Attribute::User(i) => {
            segment.users.contains(&USERS[i])
                || GROUPS.iter().zip(GROUP_USERS).any(|(group, users)| {
                    segment.groups.contains(group) && users.contains(&USERS[i])
                })
        }
        Attribute::Name(i) => segment.devices.contains(&NAMES[i]),
        Attribute::DirGroup(i) => segment.groups.contains(&GROUPS[i]),
    };
    selected && (!segment.firewall || report.complies())
}

/// Whether a rule's port spec (one of `PORT_SPECS`) matches a flow.
fn spec_matches(spec: &str, flow: &PortSpec) -> bool {
    let (protocol, ports) = match spec.split_once('/') {
        Some((protocol, ports)) => (protocol, Some(ports)),
        None => (spec, None),
    };
    let protocol_ok = match protocol {
        "any" => return true,
        "icmp" => return flow.protocol == Protocol::Icmp,
        "tcp" => flow.protocol == Protocol::Tcp,
        "udp" => flow.protocol == Protocol::Udp,
        other => panic!("unexpected spec {other}"),
    };
    let port_ok = match ports.map(|p| p.split_once('-').unwrap_or((p, p))) {
        None => true,
        Some((low, high)) => (low.parse().unwrap()..=high.parse().unwrap()).contains(&flow.port),
    };
    protocol_ok && port_ok
}

/// The reference decision: first rule whose `from` holds a segment of the
/// source, whose `to` holds one of the destination, and whose ports match.
fn reference_decides(rules: &[RuleSpec], from: &[&str], to: &[&str], flow: &PortSpec) -> Action {
    rules
        .iter()
        .find(|rule| {
            rule.from.iter().any(|s| from.contains(s))
                && rule.to.iter().any(|s| to.contains(s))
                && rule.ports.iter().any(|spec| spec_matches(spec, flow))
        })
        .map_or(Action::Deny, |rule| {
            if rule.deny {
                Action::Deny
            } else {
                Action::Allow
            }
        })
}

fn endpoint(attribute: Attribute) -> Endpoint {
    match attribute {
        Attribute::Tag(i) => Endpoint::Tag(TAGS[i].to_string()),
        Attribute::User(i) => Endpoint::User(USERS[i].to_string()),
        Attribute::Name(i) => Endpoint::Device(NAMES[i].to_string()),
        Attribute::DirGroup(i) => Endpoint::Group(GROUPS[i].to_string()),
    }
}

/// The filter's reading of a compiled config: first rule whose sources hold
/// `source` and whose protocol and ports match the flow; default deny.
fn filter_decides(config: &FilterConfig, source: &IpNet, flow: &PortSpec) -> Action {
    let matches_flow = |protocol: Protocol, ports: &[ztmesh_filter::PortRange]| {
        let ported = matches!(flow.protocol, Protocol::Tcp | Protocol::Udp);
        let port_ok = ports.is_empty() || (ported && ports.iter().any(|r| r.contains(flow.port)));
        match protocol {
            Protocol::Any => port_ok,
            Protocol::Icmp => flow.protocol == Protocol::Icmp,
            other => other == flow.protocol && port_ok,
        }
    };
    config
        .rules
        .iter()
        .find(|rule| rule.sources.contains(source) && matches_flow(rule.protocol, &rule.ports))
        .map_or(Action::Deny, |rule| rule.action)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_filters_agree_with_evaluate(
        segments in proptest::collection::vec(segment(), 4),
        rules in proptest::collection::vec(rule(), 1..=6),
        attributes in proptest::collection::vec((attribute(), report()), 2..=6),
    ) {
        let text = policy_text(&segments, &rules);
        let policy = Policy::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let devices: Vec<Device> = attributes.iter().enumerate().map(|(i, (a, r))| device(i, *a, *r)).collect();
        let memberships: Vec<Vec<&str>> = attributes
            .iter()
            .map(|(a, r)| {
                SEGMENTS
                    .iter()
                    .zip(&segments)
                    .filter(|(_, s)| in_segment(s, *a, *r))
                    .map(|(name, _)| *name)
                    .collect()
            })
            .collect();
        for (device, expected) in devices.iter().zip(&memberships) {
            prop_assert_eq!(&policy.segments_of(device), expected, "{:?}\n{}", device, text);
        }
        let configs: Vec<FilterConfig> = devices.iter().map(|d| policy.compile(&devices, &d.id, 1, 0)).collect();
        let peers: Vec<Vec<String>> = devices.iter().map(|d| policy.peers_of(&devices, &d.id, 0)).collect();
        let flows: Vec<PortSpec> = FLOWS.iter().map(|f| PortSpec::parse(f).unwrap()).collect();
        for (a, from) in devices.iter().enumerate() {
            for (b, to) in devices.iter().enumerate() {
                if a == b {
                    prop_assert!(!peers[a].contains(&to.id), "a device is never its own peer");
                    continue;
                }
                prop_assert_eq!(peers[a].contains(&to.id), peers[b].contains(&from.id), "peers are symmetric");
                let both_comply = attributes[a].1.complies() && attributes[b].1.complies();
                for flow in &flows {
                    let expected = reference_decides(&rules, &memberships[a], &memberships[b], flow);
                    if both_comply {
                        let evaluated = policy.evaluate(&endpoint(attributes[a].0), &endpoint(attributes[b].0), flow).action;
                        prop_assert_eq!(evaluated, expected, "evaluate {} -> {} on {}\n{}", from.id, to.id, flow, text);
                    }
                    let compiled = filter_decides(&configs[b], &from.addresses[0], flow);
                    prop_assert_eq!(compiled, expected, "{} -> {} on {}\n{}", from.id, to.id, flow, text);
                    if expected == Action::Allow {
                        prop_assert!(peers[b].contains(&from.id), "allowed flow but not peers\n{}", text);
                    }
                }
            }
        }
    }
}
