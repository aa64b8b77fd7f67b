//! Compile and peer tests on a small three-device network.

use ipnet::IpNet;
use ztmesh_filter::{Action, FilterRule, PortRange, Protocol};

use crate::{Device, Policy};

const POLICY: &str = r#"
[groups]
eng = ["alice@example.com"]

[segments]
laptops = { groups = ["eng"] }
web = { tags = ["web"] }
db = { tags = ["db"], devices = ["legacy-db-1"] }

[[rules]]
name = "no-ssh-web-to-db"
from = ["web"]
to = ["db"]
ports = ["tcp/22"]
action = "deny"

[[rules]]
name = "eng-to-web"
from = ["laptops"]
to = ["web"]
ports = ["tcp/443", "tcp/22", "tcp/8000-8100", "udp/53", "icmp", "tcp/8100-8200"]

[[rules]]
name = "to-db"
from = ["web", "laptops"]
to = ["db"]
ports = ["tcp", "icmp"]

[[rules]]
name = "web-to-web"
from = ["web"]
to = ["web"]
ports = ["any"]
"#;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn range(start: u16, end: u16) -> PortRange {
    PortRange { start, end }
}

fn devices() -> Vec<Device> {
    vec![
        Device {
            id: "l1".into(),
            name: "alice-laptop".into(),
            user: Some("alice@example.com".into()),
            tags: vec![],
            addresses: vec![net("100.64.0.1/32")],
            groups: vec![],
            posture: None,
        },
        Device {
            id: "w1".into(),
            name: "web-1".into(),
            user: None,
            tags: vec!["web".into()],
            addresses: vec![net("100.64.0.2/32"), net("fd7a::2/128")],
            groups: vec![],
            posture: None,
        },
        Device {
            id: "d1".into(),
            name: "legacy-db-1".into(),
            user: None,
            tags: vec![],
            addresses: vec![net("100.64.0.3/32")],
            groups: vec![],
            posture: None,
        },
    ]
}

fn rule(
    name: &str,
    action: Action,
    sources: &[&str],
    destinations: &[&str],
    protocol: Protocol,
    ports: Vec<PortRange>,
) -> FilterRule {
    FilterRule {
        name: name.into(),
        action,
        sources: sources.iter().map(|s| net(s)).collect(),
        destinations: destinations.iter().map(|s| net(s)).collect(),
        protocol,
        ports,
        monitor: false,
    }
}

#[test]
fn web_server_gets_port_groups_per_protocol() {
    let policy = Policy::parse(POLICY).unwrap();
    let config = policy.compile(&devices(), "w1", 7, 0);
    assert_eq!(config.version, 7);
    let sources = ["100.64.0.1/32"];
    let destinations = ["100.64.0.2/32", "fd7a::2/128"];
    assert_eq!(
        config.rules,
        vec![
            rule(
                "eng-to-web",
                Action::Allow,
                &sources,
                &destinations,
                Protocol::Tcp,
                vec![range(22, 22), range(443, 443), range(8000, 8200)]
            ),
            rule(
                "eng-to-web",
                Action::Allow,
                &sources,
                &destinations,
                Protocol::Udp,
                vec![range(53, 53)]
            ),
            rule(
                "eng-to-web",
                Action::Allow,
                &sources,
                &destinations,
                Protocol::Icmp,
                vec![]
            ),
            // `web-to-web` is left out: the only web device is the target itself.
        ]
    );
}

#[test]
fn database_gets_deny_before_allow() {
    let policy = Policy::parse(POLICY).unwrap();
    let config = policy.compile(&devices(), "d1", 1, 0);
    let db = ["100.64.0.3/32"];
    assert_eq!(
        config.rules,
        vec![
            rule(
                "no-ssh-web-to-db",
                Action::Deny,
                &["100.64.0.2/32", "fd7a::2/128"],
                &db,
                Protocol::Tcp,
                vec![range(22, 22)]
            ),
            rule(
                "to-db",
                Action::Allow,
                &["100.64.0.1/32", "100.64.0.2/32", "fd7a::2/128"],
                &db,
                Protocol::Tcp,
                vec![]
            ),
            rule(
                "to-db",
                Action::Allow,
                &["100.64.0.1/32", "100.64.0.2/32", "fd7a::2/128"],
                &db,
                Protocol::Icmp,
                vec![]
            ),
        ]
    );
}

#[test]
fn laptop_accepts_nothing_and_unknown_devices_get_no_rules() {
    let policy = Policy::parse(POLICY).unwrap();
    assert!(policy.compile(&devices(), "l1", 3, 0).rules.is_empty());
    let unknown = policy.compile(&devices(), "nope", 4, 0);
    assert_eq!((unknown.version, unknown.rules.len()), (4, 0));
    assert!(
        Policy::empty()
            .compile(&devices(), "w1", 0, 0)
            .rules
            .is_empty()
    );
}

#[test]
fn any_compiles_to_one_rule_and_self_is_never_a_source() {
    let policy = Policy::parse(POLICY).unwrap();
    let mut network = devices();
    network.push(Device {
        id: "w2".into(),
        name: "web-2".into(),
        user: None,
        tags: vec!["web".into()],
        addresses: vec![net("100.64.0.4/32")],
        groups: vec![],
        posture: None,
    });
    let config = policy.compile(&network, "w2", 1, 0);
    let web_to_web: Vec<&FilterRule> = config
        .rules
        .iter()
        .filter(|r| r.name == "web-to-web")
        .collect();
    assert_eq!(
        web_to_web,
        [&rule(
            "web-to-web",
            Action::Allow,
            &["100.64.0.2/32", "fd7a::2/128"],
            &["100.64.0.4/32"],
            Protocol::Any,
            vec![]
        )]
    );
}

#[test]
fn peers_follow_allowed_flows_in_both_directions() {
    let policy = Policy::parse(POLICY).unwrap();
    let network = devices();
    assert_eq!(policy.peers_of(&network, "l1", 0), ["d1", "w1"]);
    assert_eq!(policy.peers_of(&network, "w1", 0), ["d1", "l1"]);
    assert_eq!(policy.peers_of(&network, "d1", 0), ["l1", "w1"]);
    assert!(policy.peers_of(&network, "nope", 0).is_empty());
    assert!(Policy::empty().peers_of(&network, "l1", 0).is_empty());
}

#[test]
fn peers_exclude_devices_whose_allows_are_shadowed() {
    let policy = |rules: &str| {
        Policy::parse(&format!(
            "[segments]\na = {{ tags = [\"a\"] }}\nb = {{ tags = [\"b\"] }}\n{rules}"
        ))
        .unwrap()
    };
    let network = vec![
        Device {
            id: "a".into(),
            name: "a".into(),
            user: None,
            tags: vec!["a".into()],
            addresses: vec![net("100.64.0.1/32")],
            groups: vec![],
            posture: None,
        },
        Device {
            id: "b".into(),
            name: "b".into(),
            user: None,
            tags: vec!["b".into()],
            addresses: vec![net("100.64.0.2/32")],
            groups: vec![],
            posture: None,
        },
    ];
    let rule = |name: &str, ports: &str, action: &str| {
        format!(
            "[[rules]]\nname = \"{name}\"\nfrom = [\"a\"]\nto = [\"b\"]\nports = [{ports}]\naction = \"{action}\"\n"
        )
    };
    let shadowed = policy(&(rule("d", "\"any\"", "deny") + &rule("x", "\"tcp/443\"", "allow")));
    assert!(shadowed.peers_of(&network, "a", 0).is_empty());
    let shadowed = policy(
        &(rule("d1", "\"tcp/1-1000\"", "deny")
            + &rule("d2", "\"tcp/1001-65535\"", "deny")
            + &rule("x", "\"tcp\"", "allow")),
    );
    assert!(shadowed.peers_of(&network, "b", 0).is_empty());
    let partly =
        policy(&(rule("d", "\"tcp/22\"", "deny") + &rule("x", "\"tcp/22\", \"tcp/443\"", "allow")));
    assert_eq!(partly.peers_of(&network, "a", 0), ["b"]);
    assert_eq!(partly.peers_of(&network, "b", 0), ["a"]);
    let deny_only = policy(&rule("d", "\"any\"", "deny"));
    assert!(deny_only.peers_of(&network, "a", 0).is_empty());
}
