//! Every validation error, with the exact line and column it points at.

use crate::{Policy, PolicyError};

/// The DESIGN.md example, adapted: no `posture` (see `posture_names_must_be_defined`)
/// and test endpoints carry their kind.
const DESIGN_EXAMPLE: &str = r#"[groups]
eng = ["alice@example.com", "bob@example.com"]

[segments]
laptops = { groups = ["eng"] }
web     = { tags = ["web"] }
db      = { tags = ["db"] }

[[rules]]
name = "eng-to-web"
from = ["laptops"]
to = ["web"]
ports = ["tcp/443", "tcp/22"]

[[rules]]
name = "web-to-db"
from = ["web"]
to = ["db"]
ports = ["tcp/5432"]

[[tests]]
from = "alice@example.com"
to = "tag:db"
port = "tcp/5432"
expect = "deny"
"#;

/// Parses `text`, expecting an error; returns (line, column, message).
fn error(text: &str) -> (usize, usize, String) {
    let PolicyError {
        line,
        column,
        message,
    } = Policy::parse(text).unwrap_err();
    (line, column, message)
}

/// A valid prefix: groups on lines 1-2, segments on lines 4-6.
const HEAD: &str = "[groups]\neng = [\"alice@example.com\"]\n\n[segments]\nlaptops = { groups = [\"eng\"] }\nweb = { tags = [\"web\"] }\ndb = { tags = [\"db\"] }\n";

/// `HEAD` plus one rule starting on line 8 with the given field lines.
fn with_rule(fields: &str) -> String {
    format!("{HEAD}[[rules]]\n{fields}")
}

#[test]
fn design_example_parses() {
    let policy = Policy::parse(DESIGN_EXAMPLE).unwrap();
    assert_eq!(policy.rule_count(), 2);
    assert_eq!(
        policy.segment_names().collect::<Vec<_>>(),
        ["db", "laptops", "web"]
    );
}

#[test]
fn posture_names_must_be_defined() {
    let builtin = DESIGN_EXAMPLE.replace(
        "db      = { tags = [\"db\"] }",
        "db      = { tags = [\"db\"], posture = [\"disk-encrypted\"] }",
    );
    assert!(Policy::parse(&builtin).is_ok());
    let text = DESIGN_EXAMPLE.replace(
        "db      = { tags = [\"db\"] }",
        "db      = { tags = [\"db\"], posture = [\"disk-encrypted\", \"hardened\"] }",
    );
    let (line, column, message) = error(&text);
    assert_eq!((line, column), (7, 57));
    assert_eq!(
        message,
        "posture `hardened` is not defined; defined postures: disk-encrypted, firewall"
    );
}

#[test]
fn toml_syntax_errors_are_placed() {
    let (line, column, _) = error("[segments]\nweb = { tags = [\"web\" }\n");
    assert_eq!(line, 2);
    assert!(column > 1);
    let (line, column, message) = error(&with_rule(
        "name = \"r\"\nfrom = [\"web\"]\nto = [\"db\"]\nports = [\"any\"]\nprio = 1\n",
    ));
    assert_eq!((line, column), (13, 1));
    assert!(message.contains("unknown field `prio`"), "{message}");
    let (line, _, message) = error(&with_rule(
        "name = \"r\"\nfrom = [\"web\"]\nto = [\"db\"]\n",
    ));
    assert_eq!(line, 8);
    assert!(message.contains("missing field `ports`"), "{message}");
    let (line, _, message) = error("[segment]\n");
    assert_eq!(line, 1);
    assert!(message.contains("unknown field `segment`"), "{message}");
}

#[test]
fn unknown_segment_lists_the_defined_ones() {
    let (line, column, message) = error(&with_rule(
        "name = \"r\"\nfrom = [\"web\"]\nto = [\"web\", \"dbs\"]\nports = [\"tcp/5432\"]\n",
    ));
    assert_eq!((line, column), (11, 14));
    assert_eq!(
        message,
        "segment `dbs` is not defined; defined segments: db, laptops, web"
    );
}

#[test]
fn unknown_group_lists_the_defined_ones() {
    let (line, column, message) = error(
        "[groups]\neng = [\"a@x\"]\nops = []\n\n[segments]\nlaptops = { groups = [\"eng\", \"sre\"] }\n",
    );
    assert_eq!((line, column), (6, 30));
    assert_eq!(
        message,
        "group `sre` is not defined; defined groups: eng, ops"
    );
    let (_, _, message) = error("[segments]\nlaptops = { groups = [\"eng\"] }\n");
    assert_eq!(
        message,
        "group `eng` is not defined; no groups are defined yet"
    );
}

#[test]
fn bad_port_specs_point_at_the_spec() {
    let cases = [
        ("tcp/70000", "`tcp/70000`: port out of range (1-65535)"),
        ("tcp/90-80", "`tcp/90-80`: range start is after its end"),
        (
            "sctp/1",
            "`sctp/1`: unknown protocol; use tcp/PORT, udp/PORT, tcp/LOW-HIGH, icmp, tcp, udp or any",
        ),
    ];
    for (spec, expected) in cases {
        let (line, column, message) = error(&with_rule(&format!(
            "name = \"r\"\nfrom = [\"web\"]\nto = [\"db\"]\nports = [\"icmp\", \"{spec}\"]\n"
        )));
        assert_eq!((line, column), (12, 18), "{spec}");
        assert_eq!(message, expected);
    }
}

#[test]
fn duplicate_rule_names_are_rejected() {
    let rule = "[[rules]]\nname = \"r\"\nfrom = [\"web\"]\nto = [\"db\"]\nports = [\"any\"]\n";
    let (line, column, message) = error(&format!("{HEAD}{rule}{rule}"));
    assert_eq!((line, column), (14, 8));
    assert_eq!(
        message,
        "rule name `r` is already used by rule #1; give each rule a unique name"
    );
}

#[test]
fn empty_lists_are_rejected() {
    let (line, column, message) = error(&with_rule(
        "name = \"r\"\nfrom = []\nto = [\"db\"]\nports = [\"any\"]\n",
    ));
    assert_eq!(
        (line, column, message.as_str()),
        (
            10,
            8,
            "rule `r`: `from` is empty; list at least one segment"
        )
    );
    let (line, column, message) = error(&with_rule(
        "name = \"r\"\nfrom = [\"web\"]\nto = []\nports = [\"any\"]\n",
    ));
    assert_eq!(
        (line, column, message.as_str()),
        (11, 6, "rule `r`: `to` is empty; list at least one segment")
    );
    let (line, column, message) = error(&with_rule(
        "name = \"r\"\nfrom = [\"web\"]\nto = [\"db\"]\nports = []\n",
    ));
    assert_eq!((line, column), (12, 9));
    assert!(
        message.starts_with("rule `r`: `ports` is empty"),
        "{message}"
    );
}

#[test]
fn bad_action_is_rejected() {
    let (line, column, message) = error(&with_rule(
        "name = \"r\"\nfrom = [\"web\"]\nto = [\"db\"]\nports = [\"any\"]\naction = \"permit\"\n",
    ));
    assert_eq!((line, column), (13, 10));
    assert_eq!(
        message,
        "`permit`: unknown action; use \"allow\" or \"deny\""
    );
}

#[test]
fn invalid_names_are_rejected() {
    let (line, column, message) = error("[segments]\n\"my web\" = { tags = [\"web\"] }\n");
    assert_eq!((line, column), (2, 1));
    assert!(
        message.starts_with("segment name `my web` is invalid"),
        "{message}"
    );
    let (line, column, message) = error("[segments]\nweb = { tags = [\"\"] }\n");
    assert_eq!((line, column), (2, 17));
    assert!(message.starts_with("tag name `` is invalid"), "{message}");
    let (line, column, message) = error("[groups]\n\"a/b\" = []\n");
    assert_eq!((line, column), (2, 1));
    assert!(
        message.starts_with("group name `a/b` is invalid"),
        "{message}"
    );
    let (line, column, message) = error(&with_rule(
        "name = \"r 1\"\nfrom = [\"web\"]\nto = [\"db\"]\nports = [\"any\"]\n",
    ));
    assert_eq!((line, column), (9, 8));
    assert!(
        message.starts_with("rule name `r 1` is invalid"),
        "{message}"
    );
}

#[test]
fn bad_test_fields_are_rejected() {
    let test = |from: &str, to: &str, port: &str, expect: &str| {
        format!(
            "{HEAD}\n[[tests]]\nfrom = \"{from}\"\nto = \"{to}\"\nport = \"{port}\"\nexpect = \"{expect}\"\n"
        )
    };
    let (line, column, message) = error(&test("alice", "tag:db", "tcp/1", "deny"));
    assert_eq!((line, column), (10, 8));
    assert!(message.starts_with("`alice`: not an endpoint"), "{message}");
    let (line, column, message) = error(&test("group:eng", "group:ops", "tcp/1", "deny"));
    assert_eq!((line, column), (11, 6));
    assert_eq!(message, "group `ops` is not defined; defined groups: eng");
    let (line, column, message) = error(&test("group:eng", "tag:db", "tcp/1-2", "deny"));
    assert_eq!((line, column), (12, 8));
    assert!(message.contains("single port"), "{message}");
    let (line, column, message) = error(&test("group:eng", "tag:db", "tcp/1", "drop"));
    assert_eq!((line, column), (13, 10));
    assert_eq!(message, "`drop`: unknown expect; use \"allow\" or \"deny\"");
}

#[test]
fn a_failing_test_rejects_the_policy_at_its_line() {
    let text = format!(
        "{HEAD}[[rules]]\nname = \"eng-to-db\"\nfrom = [\"laptops\"]\nto = [\"db\"]\nports = [\"tcp/5432\"]\n\n\
         [[tests]]\nfrom = \"tag:web\"\nto = \"tag:db\"\nport = \"tcp/5432\"\nexpect = \"deny\"\n\n\
         [[tests]]\nfrom = \"alice@example.com\"\nto = \"tag:db\"\nport = \"tcp/5432\"\nexpect = \"deny\"\n"
    );
    let (line, column, message) = error(&text);
    assert_eq!((line, column), (20, 1));
    assert_eq!(
        message,
        "test #2 (from user:alice@example.com to tag:db on tcp/5432) expected deny but got allow by rule `eng-to-db`"
    );
    let flipped = text.replace(
        "from = \"tag:web\"\nto = \"tag:db\"\nport = \"tcp/5432\"\nexpect = \"deny\"",
        "from = \"tag:web\"\nto = \"tag:db\"\nport = \"tcp/5432\"\nexpect = \"allow\"",
    );
    let (line, _, message) = error(&flipped);
    assert_eq!(line, 14);
    assert_eq!(
        message,
        "test #1 (from tag:web to tag:db on tcp/5432) expected allow but got deny by default (no rule matched)"
    );
}

#[test]
fn the_first_problem_in_the_text_is_reported() {
    let text = format!(
        "{HEAD}[[rules]]\nname = \"r\"\nfrom = [\"nope\"]\nto = [\"db\"]\nports = [\"tcp/0\"]\naction = \"x\"\n"
    );
    let (line, _, message) = error(&text);
    assert_eq!(line, 10);
    assert!(message.starts_with("segment `nope`"), "{message}");
}

#[test]
fn error_display_names_line_and_column() {
    let error = Policy::parse(&with_rule(
        "name = \"r\"\nfrom = [\"web\"]\nto = [\"dbs\"]\nports = [\"any\"]\n",
    ))
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "policy line 11, column 7: segment `dbs` is not defined; defined segments: db, laptops, web"
    );
}
