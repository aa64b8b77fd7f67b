//! Import errors (each names the JSON path), warnings, and details of the
//! conversion. Whole realistic files are in `tests/import_tailscale.rs`.

use crate::import::{ImportError, import_tailscale};
use crate::{Endpoint, Policy, PortSpec};

/// Imports `text`, expecting an error; returns (path, message).
fn error(text: &str) -> (String, String) {
    match import_tailscale(text) {
        Err(ImportError::Unsupported { path, message })
        | Err(ImportError::Invalid { path, message })
        | Err(ImportError::TestFails { path, message }) => (path, message),
        other => panic!("expected a path error for {text}, got {other:?}"),
    }
}

/// Asserts the error is at `path` and its message contains `needle`.
fn assert_error(text: &str, path: &str, needle: &str) {
    let (got_path, message) = error(text);
    assert_eq!(got_path, path, "{message}");
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

/// Wraps one ACL entry in a file with a group and a host.
fn with_acl(acl: &str) -> String {
    format!(
        r#"{{"groups": {{"group:eng": ["alice@example.com"]}}, "hosts": {{"db": "100.64.0.9"}},
          "acls": [{{"action": "accept", "src": ["group:eng"], "dst": ["db:22"]}}, {acl}]}}"#
    )
}

#[test]
fn unsupported_sections_are_errors() {
    assert_error(
        r#"{"grants": []}"#,
        "grants",
        "rewrite network-only grants as `acls`",
    );
    assert_error(r#"{"postures": {}}"#, "postures", "[postures]");
    assert_error(
        r#"{"defaultSrcPosture": []}"#,
        "defaultSrcPosture",
        "posture",
    );
    assert_error(r#"{"ipsets": {}}"#, "ipsets", "hosts or CIDRs");
    assert_error(r#"{"aclz": []}"#, "aclz", "unknown section `aclz`");
}

#[test]
fn unsupported_acl_constructs_name_their_path() {
    assert_error(
        &with_acl(
            r#"{"action": "accept", "src": ["*"], "dst": ["*:*"], "srcPosture": ["posture:x"]}"#,
        ),
        "acls[1].srcPosture",
        "posture",
    );
    assert_error(
        &with_acl(
            r#"{"action": "accept", "src": ["group:eng", "autogroup:member"], "dst": ["*:*"]}"#,
        ),
        "acls[1].src[1]",
        "`autogroup:member`: autogroups have no exact ztmesh equivalent",
    );
    assert_error(
        &with_acl(
            r#"{"action": "accept", "src": ["*"], "dst": ["db:22", "autogroup:internet:*"]}"#,
        ),
        "acls[1].dst[1]",
        "autogroup:internet",
    );
    assert_error(
        &with_acl(r#"{"action": "accept", "src": ["ipset:office"], "dst": ["db:22"]}"#),
        "acls[1].src[0]",
        "IP sets",
    );
    assert_error(
        &with_acl(r#"{"action": "drop", "src": ["*"], "dst": ["db:22"]}"#),
        "acls[1].action",
        "only accept",
    );
    assert_error(
        &with_acl(r#"{"src": ["*"], "dst": ["db:22"]}"#),
        "acls[1].action",
        "missing",
    );
    assert_error(
        &with_acl(r#"{"action": "accept", "src": ["*"], "proto": "sctp", "dst": ["db:22"]}"#),
        "acls[1].proto",
        "tcp, udp and icmp only",
    );
    assert_error(
        &with_acl(r#"{"action": "accept", "src": ["*"], "proto": "tcpp", "dst": ["db:22"]}"#),
        "acls[1].proto",
        "not a protocol",
    );
    assert_error(
        &with_acl(r#"{"action": "accept", "src": ["*"], "dst": ["db:22"], "via": ["tag:x"]}"#),
        "acls[1].via",
        "unknown field `via`",
    );
}

#[test]
fn bad_destinations_and_ports_name_their_path() {
    let cases = [
        (
            r#"["db:22", "tag:web"]"#,
            "acls[1].dst[1]",
            "`tag:web` has no port",
        ),
        (r#"["db"]"#, "acls[1].dst[0]", "`db` has no port"),
        (
            r#"["db:70000"]"#,
            "acls[1].dst[0]",
            "`70000` is out of range; ports are 1-65535",
        ),
        (r#"["db:0"]"#, "acls[1].dst[0]", "out of range"),
        (
            r#"["db:22,100-90"]"#,
            "acls[1].dst[0]",
            "range `100-90` starts after it ends",
        ),
        (r#"["db:22,,80"]"#, "acls[1].dst[0]", "`` is not a port"),
        (r#"["[fd7a::1:22"]"#, "acls[1].dst[0]", "has no port"),
        (
            r#"["dbb:22"]"#,
            "acls[1].dst[0]",
            "host `dbb` is not defined; defined hosts: db",
        ),
        (
            r#"["group:ops:22"]"#,
            "acls[1].dst[0]",
            "group `group:ops` is not defined; defined groups: group:eng",
        ),
        (
            r#"["tag:a b:22"]"#,
            "acls[1].dst[0]",
            "tag name `a b` is invalid",
        ),
        (r#"[]"#, "acls[1].dst", "no destinations"),
        (r#""db:22""#, "acls[1].dst", "expected a list"),
    ];
    for (dst, path, needle) in cases {
        assert_error(
            &with_acl(&format!(
                r#"{{"action": "accept", "src": ["*"], "dst": {dst}}}"#
            )),
            path,
            needle,
        );
    }
    assert_error(
        &with_acl(r#"{"action": "accept", "src": ["*"], "proto": "icmp", "dst": ["db:22"]}"#),
        "acls[1].dst[0]",
        "ICMP has no ports",
    );
    assert_error(
        &with_acl(r#"{"action": "accept", "src": ["group:nope"], "dst": ["db:22"]}"#),
        "acls[1].src[0]",
        "group `group:nope` is not defined",
    );
    assert_error(
        &with_acl(r#"{"action": "accept", "src": ["*"], "dst": ["db:22"], "ports": ["db:22"]}"#),
        "acls[1].ports",
        "legacy name of `dst`",
    );
}

#[test]
fn bad_groups_hosts_and_tests_name_their_path() {
    assert_error(
        r#"{"groups": {"eng": []}}"#,
        "groups.eng",
        "write \"group:eng\"",
    );
    assert_error(
        r#"{"groups": {"group:eng": ["alice@x.org", "group:ops"]}}"#,
        r#"groups["group:eng"][1]"#,
        "groups cannot contain groups",
    );
    assert_error(
        r#"{"groups": {"group:eng": ["alice"]}}"#,
        r#"groups["group:eng"][0]"#,
        "`alice@` for a headscale user",
    );
    assert_error(
        r#"{"hosts": {"db": "10.0.0.300"}}"#,
        "hosts.db",
        "not an IP address or CIDR",
    );
    assert_error(r#"{"tagOwners": {"web": []}}"#, "tagOwners.web", "tag:web");
    let file = |test: &str| {
        format!(
            r#"{{"hosts": {{"lan": "10.1.0.0/16"}},
               "acls": [{{"action": "accept", "src": ["alice@x.org"], "dst": ["tag:web:443"]}}],
               "tests": [{test}]}}"#
        )
    };
    assert_error(
        &file(r#"{"src": "alice@x.org", "accept": ["tag:web:443"], "srcPostureAttrs": {}}"#),
        "tests[0].srcPostureAttrs",
        "posture",
    );
    assert_error(
        &file(r#"{"src": "alice@x.org", "accept": ["tag:web:443", "lan:22"]}"#),
        "tests[0].accept[1]",
        "`lan` is the network 10.1.0.0/16",
    );
    assert_error(
        &file(r#"{"src": "alice@x.org", "accept": ["tag:web:80,443"]}"#),
        "tests[0].accept[0]",
        "a test checks one port",
    );
    assert_error(
        &file(r#"{"src": "*", "accept": []}"#),
        "tests[0].src",
        "a test needs one",
    );
    assert_error(&file(r#"{"accept": []}"#), "tests[0].src", "missing");
}

#[test]
fn failing_tests_name_the_test_and_the_flow() {
    let text = r#"{
      "acls": [{"action": "accept", "src": ["alice@x.org"], "proto": "tcp", "dst": ["tag:web:443"]}],
      "tests": [
        {"src": "alice@x.org", "accept": ["tag:web:443"], "deny": ["tag:web:80"]},
        {"src": "alice@x.org", "proto": "udp", "deny": ["tag:web:53"], "accept": ["tag:web:443"]},
      ],
    }"#;
    let (path, message) = error(text);
    assert_eq!(path, "tests[1].accept[0]");
    assert!(
        message.contains("expects allow from user:alice@x.org to tag:web on udp/443, but on the converted policy no rule matches, so it is denied"),
        "{message}"
    );
    let text = r#"{
      "acls": [{"action": "accept", "src": ["alice@x.org"], "dst": ["tag:web:*"]}],
      "tests": [{"src": "alice@x.org", "deny": ["tag:web:80"]}],
    }"#;
    let (path, message) = error(text);
    assert_eq!(path, "tests[0].deny[0]");
    assert!(message.contains("rule `acl-0` decides allow"), "{message}");
}

#[test]
fn syntax_errors_and_duplicate_keys_have_line_and_column() {
    let err =
        import_tailscale("{\n  // comment\n  \"acls\": [\n    {\"action\": accept},\n  ],\n}")
            .unwrap_err();
    let ImportError::Syntax { line, column, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((*line, *column), (4, 16), "{err}");
    assert!(
        err.to_string()
            .starts_with("line 4, column 16: expected value"),
        "{err}"
    );

    let err = import_tailscale("{\"acls\": [],\n \"acls\": []}").unwrap_err();
    assert!(
        matches!(&err, ImportError::Syntax { line: 2, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("key `acls` appears twice"),
        "{err}"
    );
    assert!(matches!(
        import_tailscale("[]"),
        Err(ImportError::Invalid { .. })
    ));
}

#[test]
fn ignored_sections_are_warnings_naming_the_section() {
    let text = r#"{
      "tagOwners": {"tag:web": ["alice@x.org"], "tag:db": []},
      "ssh": [], "sshTests": [], "nodeAttrs": [], "autoApprovers": {},
      "derpMap": {}, "randomizeClientPort": true, "disableIPv4": false, "OneCGNATRoute": "",
      "acls": [],
    }"#;
    let imported = import_tailscale(text).unwrap();
    for section in [
        "ssh",
        "sshTests",
        "nodeAttrs",
        "autoApprovers",
        "derpMap",
        "randomizeClientPort",
        "disableIPv4",
        "OneCGNATRoute",
    ] {
        let needle = format!("section `{section}` is left out");
        assert!(
            imported.warnings.iter().any(|w| w.contains(&needle)),
            "{section}: {:?}",
            imported.warnings
        );
    }
    assert!(
        imported
            .warnings
            .iter()
            .any(|w| w.contains("`ztmesh admin join-token create --tag NAME` for tags: db, web"))
    );
    let policy = Policy::parse(&imported.policy).unwrap();
    assert_eq!(policy.rule_count(), 0);
}

#[test]
fn default_proto_covers_tcp_udp_and_icmp_and_star_is_not_any() {
    let text = r#"{"acls": [
      {"action": "accept", "src": ["alice@x.org"], "dst": ["tag:web:443", "tag:db:*"]},
    ]}"#;
    let imported = import_tailscale(text).unwrap();
    assert!(imported.policy.contains(
        "name = \"acl-0\"\nfrom = [\"user:alice@x.org\"]\nto = [\"tag:web\"]\nports = [\"tcp/443\", \"udp/443\", \"icmp\"]\n"
    ), "{}", imported.policy);
    assert!(imported.policy.contains(
        "name = \"acl-0-b\"\nfrom = [\"user:alice@x.org\"]\nto = [\"tag:db\"]\nports = [\"tcp\", \"udp\", \"icmp\"]\n"
    ), "{}", imported.policy);
    let policy = Policy::parse(&imported.policy).unwrap();
    let alice = Endpoint::parse("alice@x.org").unwrap();
    let decide = |to: &str, port: &str| {
        policy
            .evaluate(
                &alice,
                &Endpoint::parse(to).unwrap(),
                &PortSpec::parse(port).unwrap(),
            )
            .action
    };
    use ztmesh_filter::Action::{Allow, Deny};
    assert_eq!(decide("tag:web", "udp/443"), Allow);
    assert_eq!(decide("tag:web", "icmp"), Allow);
    assert_eq!(decide("tag:web", "tcp/80"), Deny);
    assert_eq!(decide("tag:db", "udp/9999"), Allow);
    // Not `any`: another IP protocol is not covered.
    let other = PortSpec {
        protocol: ztmesh_filter::Protocol::Any,
        port: 0,
    };
    assert_eq!(
        policy
            .evaluate(&alice, &Endpoint::Tag("db".into()), &other)
            .action,
        Deny
    );
}

#[test]
fn odd_user_names_are_escaped_and_kept_distinct() {
    let text = r#"{"acls": [
      {"action": "accept", "src": ["o\"brien+x@example.com", "o_brien_x@example.com"], "dst": ["tag:web:22"]},
    ]}"#;
    let imported = import_tailscale(text).unwrap();
    assert!(
        imported
            .policy
            .contains(r#""user:o_brien_x@example.com" = { users = ["o\"brien+x@example.com"] }"#),
        "{}",
        imported.policy
    );
    assert!(
        imported
            .policy
            .contains(r#""user:o_brien_x@example.com-2" = { users = ["o_brien_x@example.com"] }"#),
        "{}",
        imported.policy
    );
    let policy = Policy::parse(&imported.policy).unwrap();
    let decision = policy.evaluate(
        &Endpoint::User("o\"brien+x@example.com".into()),
        &Endpoint::Tag("web".into()),
        &PortSpec::parse("tcp/22").unwrap(),
    );
    assert_eq!(decision.rule.as_deref(), Some("acl-0"));
}

#[test]
fn split_rules_get_letter_suffixes() {
    assert_eq!(super::split_suffix(0), "");
    assert_eq!(super::split_suffix(1), "-b");
    assert_eq!(super::split_suffix(25), "-z");
    assert_eq!(super::split_suffix(26), "-ba");
}

#[test]
fn bracketed_ipv6_destinations_and_crlf_comments() {
    let text = "{\r\n  // lab\r\n  \"acls\": [\r\n    {\"action\": \"accept\", \"src\": [\"fd7a::5\"], \"proto\": \"tcp\", \"dst\": [\"[fd7a:1::/48]:22\", \"[fd7a::1]:443\", \"fd7a:2::/64:80\"]},\r\n  ],\r\n}\r\n";
    let imported = import_tailscale(text).unwrap();
    let policy = Policy::parse(&imported.policy).unwrap();
    let from = Endpoint::parse("ip:fd7a::5").unwrap();
    let decide = |to: &str, port: &str| {
        policy
            .evaluate(
                &from,
                &Endpoint::parse(to).unwrap(),
                &PortSpec::parse(port).unwrap(),
            )
            .rule
    };
    assert_eq!(decide("ip:fd7a:1::9", "tcp/22").as_deref(), Some("acl-0"));
    assert_eq!(decide("ip:fd7a::1", "tcp/443").as_deref(), Some("acl-0-b"));
    assert_eq!(decide("ip:fd7a:2::3", "tcp/80").as_deref(), Some("acl-0-c"));
    assert_eq!(decide("ip:fd7a::1", "tcp/22"), None);
    assert!(
        imported
            .policy
            .contains("\"net:fd7a:1::_48\" = { cidrs = [\"fd7a:1::/48\"] }")
    );
}
