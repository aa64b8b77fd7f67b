//! Tailscale/headscale import on realistic ACL files: the output matches its
//! golden file byte for byte (`UPDATE_GOLDEN=1` rewrites them), parses as a
//! policy whose imported tests pass, and decides a dozen flows per file the
//! way Tailscale would.

#![allow(clippy::unwrap_used, reason = "test helpers panic on broken fixtures")]

use std::fs;
use std::path::PathBuf;

use ztmesh_filter::Action::{self, Allow, Deny};
use ztmesh_policy::import::{Imported, import_tailscale};
use ztmesh_policy::{Endpoint, Policy, PortSpec};

/// Imports `fixtures/tailscale/NAME.hujson` and compares the policy with
/// `NAME.expected.toml` (rewritten instead when `UPDATE_GOLDEN` is set).
fn import_fixture(name: &str) -> Imported {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tailscale");
    let input = fs::read_to_string(dir.join(format!("{name}.hujson"))).unwrap();
    let imported = import_tailscale(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
    let golden = dir.join(format!("{name}.expected.toml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&golden, &imported.policy).unwrap();
    }
    let expected = fs::read_to_string(&golden)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", golden.display()));
    assert!(
        imported.policy == expected,
        "{name}: output differs from {}; run with UPDATE_GOLDEN=1 and review the diff\n{}",
        golden.display(),
        imported.policy
    );
    assert_eq!(
        import_tailscale(&input).unwrap(),
        imported,
        "{name}: output is not deterministic"
    );
    imported
}

/// Checks each `(from, to, flow, expected)` against the parsed policy.
fn check_flows(policy: &Policy, flows: &[(&str, &str, &str, Action)]) {
    for &(from, to, flow, expected) in flows {
        let decision = policy.evaluate(
            &Endpoint::parse(from).unwrap(),
            &Endpoint::parse(to).unwrap(),
            &PortSpec::parse(flow).unwrap(),
        );
        assert_eq!(
            decision.action, expected,
            "{from} -> {to} {flow}: got {decision:?}"
        );
    }
}

#[test]
fn company_policy_imports_and_decides_like_tailscale() {
    let imported = import_fixture("company");
    assert_eq!(
        imported.warnings,
        [
            "section `tagOwners` is left out: ztmesh grants tags through join tokens; create them with `ztmesh admin join-token create --tag NAME` for tags: ci, db, monitoring, web",
            "groups also take members from the ztmesh user directory: check that directory groups named eng, finance, ops (`ztmesh admin groups`) hold only the intended users",
        ]
    );
    let policy = Policy::parse(&imported.policy).unwrap();
    check_flows(
        &policy,
        &[
            // Engineers: TCP 80/443 to web, 5432 to db; proto tcp excludes UDP.
            ("alice@acme.example", "tag:web", "tcp/80", Allow),
            ("bob@acme.example", "tag:web", "udp/443", Deny),
            ("bob@acme.example", "tag:db", "tcp/5432", Allow),
            ("bob@acme.example", "tag:db", "tcp/22", Deny),
            ("group:eng", "tag:web", "tcp/443", Allow),
            // Documented semantics: proto tcp covers TCP only (Tailscale
            // clients also answer pings to any address a rule opens).
            ("alice@acme.example", "tag:web", "icmp", Deny),
            // Operations: everything on servers and the office LAN (TCP, UDP, ICMP).
            ("carol@acme.example", "ip:192.168.10.7", "udp/161", Allow),
            ("carol@acme.example", "tag:monitoring", "tcp/9090", Allow),
            ("carol@acme.example", "tag:ci", "tcp/22", Deny),
            ("carol@acme.example", "tag:ci", "icmp", Allow),
            ("carol@acme.example", "ip:100.64.99.1", "icmp", Allow),
            // Finance: ledger on 443 with the default protocols.
            ("erin@acme.example", "ip:100.64.5.20", "udp/443", Allow),
            ("erin@acme.example", "ip:100.64.5.20", "icmp", Allow),
            ("dave@acme.example", "ip:100.64.5.20", "tcp/22", Deny),
            // Monitoring and CI.
            ("tag:monitoring", "tag:web", "tcp/9100", Allow),
            ("tag:monitoring", "tag:db", "tcp/9187", Allow),
            ("tag:monitoring", "tag:db", "udp/9100", Deny),
            ("tag:ci", "tag:web", "udp/22", Allow),
            ("tag:ci", "tag:web", "tcp/443", Deny),
            // DNS over UDP only; the IPv6 lab's port range.
            ("alice@acme.example", "ip:192.168.10.53", "udp/53", Allow),
            ("alice@acme.example", "ip:192.168.10.53", "tcp/53", Deny),
            ("alice@acme.example", "ip:fd00:10:20::5", "tcp/8050", Allow),
            ("alice@acme.example", "ip:fd00:10:20::5", "tcp/8200", Deny),
            ("alice@acme.example", "ip:fd00:10:21::5", "tcp/8050", Deny),
            // Nobody named by an ACL gets nothing.
            ("mallory@evil.example", "tag:web", "tcp/443", Deny),
        ],
    );
}

#[test]
fn headscale_policy_imports_and_decides_like_headscale() {
    let imported = import_fixture("headscale");
    assert_eq!(
        imported.warnings,
        [
            "section `autoApprovers` is left out: route and exit node approval; ztmesh has no advertised routes to approve; it grants no network access",
            "section `ssh` is left out: Tailscale SSH rules; ztmesh has no SSH access layer; it grants no network access",
            "section `tagOwners` is left out: ztmesh grants tags through join tokens; create them with `ztmesh admin join-token create --tag NAME` for tags: iot, server",
            "headscale users are kept as written (jane@, kim@, tom@); ztmesh matches user names exactly, so create the ztmesh users with these names or edit the policy",
            "groups also take members from the ztmesh user directory: check that directory groups named admins, family (`ztmesh admin groups`) hold only the intended users",
        ]
    );
    let policy = Policy::parse(&imported.policy).unwrap();
    check_flows(
        &policy,
        &[
            // Admins reach everything.
            ("jane@", "tag:iot", "tcp/22", Allow),
            ("jane@", "ip:100.64.0.77", "udp/5000", Allow),
            ("jane@", "kim@", "icmp", Allow),
            // Family: file shares on the NAS and media on servers.
            ("kim@", "ip:100.64.0.10", "tcp/445", Allow),
            ("kim@", "ip:100.64.0.10", "tcp/22", Deny),
            ("kim@", "tag:server", "tcp/8096", Allow),
            ("kim@", "tag:server", "udp/8096", Allow),
            ("kim@", "tag:iot", "tcp/1883", Deny),
            // Servers: NFS on the NAS, MQTT on IoT devices.
            ("tag:server", "ip:100.64.0.10", "tcp/2049", Allow),
            ("tag:server", "tag:iot", "tcp/1883", Allow),
            ("tag:server", "tag:iot", "tcp/22", Deny),
            // IoT: DNS over UDP on the router, nothing else.
            ("tag:iot", "ip:100.64.0.1", "udp/53", Allow),
            ("tag:iot", "ip:100.64.0.1", "tcp/53", Deny),
            ("tag:iot", "ip:100.64.0.10", "tcp/445", Deny),
            // Tom's own devices reach each other; not Jane's.
            ("tom@", "tom@", "tcp/3389", Allow),
            ("tom@", "jane@", "tcp/3389", Deny),
        ],
    );
}

#[test]
fn commented_policy_imports_and_decides_like_tailscale() {
    let imported = import_fixture("commented");
    assert_eq!(
        imported.warnings,
        [
            "section `nodeAttrs` is left out: node attributes (Tailscale client features, not access rules); it grants no network access",
            "section `randomizeClientPort` is left out: a client port setting; it grants no network access",
            "groups also take members from the ztmesh user directory: check that directory groups named data, sre (`ztmesh admin groups`) hold only the intended users",
        ]
    );
    let policy = Policy::parse(&imported.policy).unwrap();
    check_flows(
        &policy,
        &[
            // Data team (legacy users/ports fields), default protocols.
            ("ana@corp.example", "ip:10.20.3.4", "tcp/5432", Allow),
            ("ben@corp.example", "ip:10.20.200.1", "udp/8123", Allow),
            ("ben@corp.example", "ip:10.20.3.4", "icmp", Allow),
            ("ben@corp.example", "ip:10.21.0.1", "tcp/5432", Deny),
            (
                "ana@corp.example",
                "ip:fd7a:115c:a1e0::42",
                "tcp/9090",
                Allow,
            ),
            (
                "ana@corp.example",
                "ip:fd7a:115c:a1e0::42",
                "tcp/9091",
                Deny,
            ),
            // SRE: proto "6" is TCP.
            (
                "sam@corp.example",
                "ip:fd7a:115c:a1e0::42",
                "tcp/9099",
                Allow,
            ),
            (
                "sam@corp.example",
                "ip:fd7a:115c:a1e0::42",
                "udp/9095",
                Deny,
            ),
            ("sam@corp.example", "tag:etl", "tcp/22", Allow),
            // ETL: proto 17 (a JSON number) is UDP.
            ("tag:etl", "ip:10.20.0.5", "udp/514", Allow),
            ("tag:etl", "ip:10.20.0.5", "tcp/514", Deny),
            // The old VM subnet as a source.
            ("ip:100.64.7.200", "tag:etl", "tcp/8080", Allow),
            ("ip:100.64.8.1", "tag:etl", "tcp/8080", Deny),
        ],
    );
}

#[test]
fn imported_tests_are_carried_over() {
    let imported = import_fixture("company");
    // 5 Tailscale tests with 12 accept/deny entries in all.
    assert_eq!(imported.policy.matches("[[tests]]").count(), 12);
    assert!(imported.policy.contains(
        "# from tests[0].deny[1]\n[[tests]]\nfrom = \"user:alice@acme.example\"\nto = \"ip:100.64.5.20\"\nport = \"tcp/443\"\nexpect = \"deny\"\n"
    ));
    let imported = import_fixture("commented");
    assert_eq!(imported.policy.matches("[[tests]]").count(), 11);
}
