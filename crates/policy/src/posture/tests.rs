//! Posture requirements and directory groups: parsing, membership, compiled
//! filters, peers and the admin report.

use std::net::IpAddr;

use ipnet::IpNet;
use ztmesh_filter::Action;

use crate::{Device, Endpoint, Policy, PolicyError, PortSpec, Posture, PostureCheck};

/// Postures on lines 5-13, segments on lines 16-19.
const POLICY: &str = r#"[groups]
eng = []
ops = ["carol@example.com"]

[postures.hardened]
min_daemon_version = "0.1.0"
os = ["Linux", "macos"]
disk_encrypted = true
firewall = true
locations = ["203.0.113.0/24", "2001:db8::/32"]

[postures.recent]
min_daemon_version = "0.2"

[segments]
laptops = { groups = ["eng", "ops"] }
secure = { groups = ["eng"], posture = ["hardened"] }
db = { tags = ["db"], posture = ["disk-encrypted", "firewall"] }
all-db = { tags = ["db"] }

[[rules]]
name = "secure-to-db"
from = ["secure"]
to = ["db"]
ports = ["tcp/5432"]

[[tests]]
from = "group:eng"
to = "tag:db"
port = "tcp/5432"
expect = "allow"
"#;

/// A report that passes every posture of `POLICY`.
fn compliant() -> Posture {
    Posture {
        os: "linux".into(),
        os_version: "12".into(),
        kernel: "6.1.0-18-amd64".into(),
        daemon_version: "0.1.0".into(),
        hostname: "host".into(),
        disk_encrypted: Some(true),
        firewall: Some(true),
        public_ip: Some(ip("203.0.113.9")),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn laptop(posture: Option<Posture>) -> Device {
    Device {
        id: "l1".into(),
        name: "alice-laptop".into(),
        user: Some("alice@example.com".into()),
        tags: vec![],
        addresses: vec![net("100.64.0.1/32")],
        groups: vec!["eng".into()],
        posture,
    }
}

fn database(posture: Option<Posture>) -> Device {
    Device {
        id: "d1".into(),
        name: "db-1".into(),
        user: None,
        tags: vec!["db".into()],
        addresses: vec![net("100.64.0.2/32")],
        groups: vec![],
        posture,
    }
}

fn error(text: &str) -> (usize, usize, String) {
    let PolicyError {
        line,
        column,
        message,
    } = Policy::parse(text).unwrap_err();
    (line, column, message)
}

/// `POLICY` with `from` replaced by `to` (which must occur).
fn edited(from: &str, to: &str) -> String {
    assert!(POLICY.contains(from), "{from}");
    POLICY.replacen(from, to, 1)
}

#[test]
fn every_posture_field_parses() {
    let policy = Policy::parse(POLICY).unwrap();
    assert_eq!(
        policy.posture_names().collect::<Vec<_>>(),
        ["disk-encrypted", "firewall", "hardened", "recent"]
    );
    assert_eq!(
        Policy::empty().posture_names().collect::<Vec<_>>(),
        ["disk-encrypted", "firewall"]
    );
    let hardened = &policy.postures["hardened"];
    assert_eq!(
        hardened, &policy.segments["secure"].postures["hardened"],
        "segments carry the declared requirement"
    );
    let names: Vec<&str> = hardened.checks.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "disk_encrypted",
            "firewall",
            "location",
            "min_daemon_version",
            "os"
        ]
    );
}

#[test]
fn posture_field_errors_point_at_the_value() {
    let cases = [
        (
            "min_daemon_version = \"0.1.0\"",
            "min_daemon_version = \"0.1.x\"",
            (6, 22),
            "`0.1.x`: not a version; write dotted numbers such as 0.1.0 (a suffix after - is ignored)",
        ),
        (
            "os = [\"Linux\", \"macos\"]",
            "os = []",
            (7, 6),
            "posture `hardened`: `os` is empty; list at least one, e.g. an os such as linux",
        ),
        (
            "os = [\"Linux\", \"macos\"]",
            "os = [\"Linux\", \"\"]",
            (7, 16),
            "posture `hardened`: `os` lists an empty entry; remove it or write an os such as linux",
        ),
        (
            "disk_encrypted = true",
            "disk_encrypted = false",
            (8, 18),
            "posture `hardened`: `disk_encrypted = false` requires nothing; set it to true or remove it",
        ),
        (
            "firewall = true",
            "firewall = false",
            (9, 12),
            "posture `hardened`: `firewall = false` requires nothing; set it to true or remove it",
        ),
        (
            "\"2001:db8::/32\"]",
            "\"2001:db8::/129\"]",
            (10, 32),
            "`2001:db8::/129`: not a network; write a CIDR such as 203.0.113.0/24 or 2001:db8::/32",
        ),
        (
            "[\"203.0.113.0/24\", ",
            "[\"203.0.113.0\", ",
            (10, 14),
            "`203.0.113.0`: not a network; write a CIDR such as 203.0.113.0/24 or 2001:db8::/32",
        ),
        (
            "locations = [\"203.0.113.0/24\", \"2001:db8::/32\"]",
            "locations = []",
            (10, 13),
            "posture `hardened`: `locations` is empty; list at least one, e.g. a network such as 203.0.113.0/24",
        ),
        (
            "min_daemon_version = \"0.2\"",
            "",
            (12, 11),
            "posture `recent` requires nothing; set at least one of min_daemon_version, os, disk_encrypted, firewall, locations",
        ),
        (
            "[postures.recent]",
            "[postures.firewall]",
            (12, 11),
            "posture `firewall` is built in; use it without declaring it, or choose another name",
        ),
        (
            "[postures.recent]",
            "[postures.\"re cent\"]",
            (12, 11),
            "posture name `re cent` is invalid; names must be non-empty and use only letters, digits and _ . @ : -",
        ),
        (
            "posture = [\"hardened\"]",
            "posture = [\"hardend\"]",
            (17, 41),
            "posture `hardend` is not defined; defined postures: disk-encrypted, firewall, hardened, recent",
        ),
    ];
    for (from, to, place, expected) in cases {
        let (line, column, message) = error(&edited(from, to));
        assert_eq!((line, column), place, "{to}: {message}");
        assert_eq!(message, expected, "{to}");
    }
    let (line, _, message) = error(&edited(
        "firewall = true",
        "firewall = true\nscreen_lock = true",
    ));
    assert_eq!(line, 10);
    assert!(message.contains("unknown field `screen_lock`"), "{message}");
    let (line, _, message) = error(&edited("firewall = true", "firewall = \"yes\""));
    assert_eq!(line, 9);
    assert!(message.contains("invalid type"), "{message}");
}

#[test]
fn undeclared_postures_list_the_built_ins() {
    let (line, column, message) =
        error("[segments]\ndb = { tags = [\"db\"], posture = [\"firewall\", \"encrypted\"] }\n");
    assert_eq!((line, column), (2, 46));
    assert_eq!(
        message,
        "posture `encrypted` is not defined; defined postures: disk-encrypted, firewall"
    );
    let policy = Policy::parse("[segments]\ndb = { tags = [\"db\"], posture = [] }\n").unwrap();
    assert_eq!(policy.segments_of(&database(None)), ["db"]);
}

#[test]
fn membership_requires_every_posture() {
    let policy = Policy::parse(POLICY).unwrap();
    assert_eq!(
        policy.segments_of(&laptop(Some(compliant()))),
        ["laptops", "secure"]
    );
    assert_eq!(policy.segments_of(&laptop(None)), ["laptops"]);
    assert_eq!(
        policy.segments_of(&database(Some(compliant()))),
        ["all-db", "db"]
    );
    assert_eq!(policy.segments_of(&database(None)), ["all-db"]);
    let failing: [fn(&mut Posture); 9] = [
        |p| p.daemon_version = "0.0.9".into(),
        |p| p.daemon_version = "unknown".into(),
        |p| p.daemon_version = String::new(),
        |p| p.os = "windows".into(),
        |p| p.disk_encrypted = None,
        |p| p.disk_encrypted = Some(false),
        |p| p.firewall = None,
        |p| p.public_ip = Some(ip("198.51.100.1")),
        |p| p.public_ip = None,
    ];
    for (index, edit) in failing.iter().enumerate() {
        let mut posture = compliant();
        edit(&mut posture);
        assert_eq!(
            policy.segments_of(&laptop(Some(posture))),
            ["laptops"],
            "case {index}"
        );
    }
    let passing: [fn(&mut Posture); 5] = [
        |p| p.daemon_version = "0.10.0".into(),
        |p| p.daemon_version = "0.1.0-beta".into(),
        |p| p.daemon_version = "0.1".into(),
        |p| p.os = "MacOS".into(),
        |p| p.public_ip = Some(ip("2001:db8:1::5")),
    ];
    for (index, edit) in passing.iter().enumerate() {
        let mut posture = compliant();
        edit(&mut posture);
        assert_eq!(
            policy.segments_of(&laptop(Some(posture))),
            ["laptops", "secure"],
            "case {index}"
        );
    }
}

#[test]
fn locations_match_v4_v6_and_v4_mapped_addresses() {
    let policy = Policy::parse(POLICY).unwrap();
    let in_secure = |address: &str| {
        let posture = Posture {
            public_ip: Some(ip(address)),
            ..compliant()
        };
        policy
            .segments_of(&laptop(Some(posture)))
            .contains(&"secure".to_string())
    };
    assert!(in_secure("203.0.113.0"));
    assert!(in_secure("203.0.113.255"));
    assert!(!in_secure("203.0.114.0"));
    assert!(in_secure("::ffff:203.0.113.7"));
    assert!(in_secure("2001:db8::1"));
    assert!(in_secure("2001:db8:ffff::1"));
    assert!(!in_secure("2001:db9::1"));
    assert!(!in_secure("::1"));
}

#[test]
fn hypothetical_endpoints_are_assumed_compliant() {
    let policy = Policy::parse(POLICY).unwrap();
    let decision = policy.evaluate(
        &Endpoint::Group("eng".into()),
        &Endpoint::Tag("db".into()),
        &PortSpec::parse("tcp/5432").unwrap(),
    );
    assert_eq!(decision.action, Action::Allow);
    assert_eq!(decision.rule.as_deref(), Some("secure-to-db"));
}

#[test]
fn compile_drops_a_non_compliant_source_until_it_complies() {
    let policy = Policy::parse(POLICY).unwrap();
    let sources = |network: &[Device]| -> Vec<IpNet> {
        let config = policy.compile(network, "d1", 1, 0);
        config.rules.into_iter().flat_map(|r| r.sources).collect()
    };
    let db = database(Some(compliant()));
    assert!(sources(&[laptop(None), db.clone()]).is_empty());
    let mut outdated = compliant();
    outdated.daemon_version = "0.0.9".into();
    assert!(sources(&[laptop(Some(outdated)), db.clone()]).is_empty());
    assert_eq!(
        sources(&[laptop(Some(compliant())), db.clone()]),
        [net("100.64.0.1/32")]
    );
    // A non-compliant destination accepts nothing from the segment.
    let mut open_disk = compliant();
    open_disk.disk_encrypted = Some(false);
    let network = [laptop(Some(compliant())), database(Some(open_disk))];
    assert!(policy.compile(&network, "d1", 1, 0).rules.is_empty());
}

#[test]
fn peers_follow_compliance() {
    let policy = Policy::parse(POLICY).unwrap();
    let peers = |laptop_posture: Option<Posture>, db_posture: Option<Posture>| {
        let network = [laptop(laptop_posture), database(db_posture)];
        (
            policy.peers_of(&network, "l1", 0),
            policy.peers_of(&network, "d1", 0),
        )
    };
    let none: Vec<String> = Vec::new();
    assert_eq!(
        peers(Some(compliant()), Some(compliant())),
        (vec!["d1".to_string()], vec!["l1".to_string()])
    );
    assert_eq!(peers(None, Some(compliant())), (none.clone(), none.clone()));
    assert_eq!(peers(Some(compliant()), None), (none.clone(), none));
}

#[test]
fn directory_groups_select_devices() {
    let policy = Policy::parse(POLICY).unwrap();
    let member = |user: &str, groups: &[&str]| Device {
        user: Some(user.to_string()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..laptop(None)
    };
    // `eng = []`: members come only from the directory.
    assert_eq!(
        policy.segments_of(&member("bob@example.com", &["eng"])),
        ["laptops"]
    );
    assert!(
        policy
            .segments_of(&member("bob@example.com", &[]))
            .is_empty()
    );
    assert!(
        policy
            .segments_of(&member("bob@example.com", &["sales", "Eng"]))
            .is_empty()
    );
    // `ops` lists carol: the table and the directory both count.
    assert_eq!(
        policy.segments_of(&member("carol@example.com", &[])),
        ["laptops"]
    );
    assert_eq!(
        policy.segments_of(&member("dave@example.com", &["ops"])),
        ["laptops"]
    );
    // A directory group a segment uses must still be declared.
    let (line, column, message) = error(&edited(
        "laptops = { groups = [\"eng\", \"ops\"] }",
        "laptops = { groups = [\"eng\", \"sales\"] }",
    ));
    assert_eq!((line, column), (16, 30));
    assert_eq!(
        message,
        "group `sales` is not defined; defined groups: eng, ops"
    );
}

#[test]
fn report_explains_every_check() {
    let policy = Policy::parse(POLICY).unwrap();
    let check =
        |segment: &str, posture: &str, check: &str, passed: bool, detail: &str| PostureCheck {
            segment: segment.into(),
            posture: posture.into(),
            check: check.into(),
            passed,
            detail: detail.into(),
        };
    let posture = Posture {
        os: "windows".into(),
        daemon_version: "0.0.9".into(),
        disk_encrypted: None,
        firewall: Some(true),
        public_ip: Some(ip("198.51.100.1")),
        ..Posture::default()
    };
    let hardened =
        |name: &str, passed: bool, detail: &str| check("secure", "hardened", name, passed, detail);
    assert_eq!(
        policy.posture_checks(&laptop(Some(posture))),
        [
            hardened("disk_encrypted", false, "unknown"),
            hardened("firewall", true, "true"),
            hardened(
                "location",
                false,
                "198.51.100.1 not in 203.0.113.0/24, 2001:db8::/32"
            ),
            hardened("min_daemon_version", false, "daemon 0.0.9 < required 0.1.0"),
            hardened("os", false, "windows not in linux, macos"),
        ]
    );
    assert_eq!(
        policy.posture_checks(&laptop(Some(compliant()))),
        [
            hardened("disk_encrypted", true, "true"),
            hardened("firewall", true, "true"),
            hardened("location", true, "203.0.113.9 in 203.0.113.0/24"),
            hardened("min_daemon_version", true, "daemon 0.1.0 >= 0.1.0"),
            hardened("os", true, "linux in linux, macos"),
        ]
    );
    let unreported = Posture {
        disk_encrypted: Some(false),
        ..Posture::default()
    };
    assert_eq!(
        policy.posture_checks(&laptop(Some(unreported))),
        [
            hardened("disk_encrypted", false, "false"),
            hardened("firewall", false, "unknown"),
            hardened("location", false, "no public address observed"),
            hardened("min_daemon_version", false, "no daemon version reported"),
            hardened("os", false, "no os reported"),
        ]
    );
    assert_eq!(
        policy.posture_checks(&database(None)),
        [
            check(
                "db",
                "disk-encrypted",
                "disk_encrypted",
                false,
                "not reported"
            ),
            check("db", "firewall", "firewall", false, "not reported"),
        ]
    );
    let mut odd = compliant();
    odd.daemon_version = "nightly".into();
    let report = policy.posture_checks(&laptop(Some(odd)));
    assert_eq!(
        report[3],
        hardened(
            "min_daemon_version",
            false,
            "daemon version `nightly` is not a version"
        )
    );
    // Selectors that do not match the device contribute nothing.
    let stranger = Device {
        groups: vec![],
        ..laptop(None)
    };
    assert!(policy.posture_checks(&stranger).is_empty());
}

#[test]
fn policy_tests_cannot_see_posture() {
    // The policy's own tests run on hypothetical endpoints, which pass every
    // posture: a test expecting a posture to deny fails.
    let text = POLICY.replace("expect = \"allow\"", "expect = \"deny\"");
    let (line, _, message) = error(&text);
    assert_eq!(line, 27);
    assert!(message.contains("expected deny but got allow"), "{message}");
}
