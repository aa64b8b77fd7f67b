//! Rolling a policy out: rules with time windows and expiry, monitor mode,
//! and warnings for rules that can never match. Public API only.

#![allow(clippy::unwrap_used)]

use ztmesh_filter::{Action, Protocol};
use ztmesh_policy::{Device, Endpoint, Policy, PortSpec};

/// 2026-11-23T00:00:00Z, a Monday.
const MONDAY: i64 = 1_795_392_000;
const HOUR: i64 = 3600;

fn device(id: &str, tags: &[&str], address: &str) -> Device {
    Device {
        id: id.into(),
        name: id.into(),
        user: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        addresses: vec![address.parse().unwrap()],
        groups: Vec::new(),
        posture: None,
    }
}

fn devices() -> Vec<Device> {
    vec![
        device("ops1", &["ops"], "100.64.0.1/32"),
        device("web1", &["web"], "100.64.0.2/32"),
        device("db1", &["db"], "100.64.0.3/32"),
        device("new1", &["new"], "100.64.0.4/32"),
    ]
}

fn ep(s: &str) -> Endpoint {
    Endpoint::parse(s).unwrap()
}

fn port(s: &str) -> PortSpec {
    PortSpec::parse(s).unwrap()
}

const TIMED: &str = r#"
[segments]
ops = { tags = ["ops"] }
web = { tags = ["web"] }
db = { tags = ["db"] }

[[rules]]
name = "ops-ssh-office-hours"
from = ["ops"]
to = ["web"]
ports = ["tcp/22"]
schedule = { days = ["mon-fri"], hours = "08:00-18:00" }

[[rules]]
name = "ops-db-jit"
from = ["ops"]
to = ["db"]
ports = ["tcp/5432"]
until = 2026-11-24T12:00:00Z

[[tests]]
from = "tag:ops"
to = "tag:web"
port = "tcp/22"
expect = "allow"
at = 2026-11-23T09:00:00Z

[[tests]]
from = "tag:ops"
to = "tag:web"
port = "tcp/22"
expect = "deny"
at = 2026-11-28T09:00:00Z

[[tests]]
from = "tag:ops"
to = "tag:db"
port = "tcp/5432"
expect = "deny"
at = 2026-11-24T13:00:00+01:00
"#;

#[test]
fn schedules_and_expiry_decide_by_time() {
    let policy = Policy::parse(TIMED).unwrap();
    let (ops, web, db) = (ep("tag:ops"), ep("tag:web"), ep("tag:db"));
    let ssh = port("tcp/22");
    // Without a time, time-limited rules count as in force.
    assert_eq!(policy.evaluate(&ops, &web, &ssh).action, Action::Allow);
    let monday_9 = MONDAY + 9 * HOUR;
    assert_eq!(
        policy.evaluate_at(&ops, &web, &ssh, monday_9).action,
        Action::Allow
    );
    let monday_19 = MONDAY + 19 * HOUR;
    let late = policy.evaluate_at(&ops, &web, &ssh, monday_19);
    assert_eq!((late.action, late.rule), (Action::Deny, None));
    let pg = port("tcp/5432");
    let until = MONDAY + 36 * HOUR;
    assert_eq!(
        policy.evaluate_at(&ops, &db, &pg, until - 1).action,
        Action::Allow
    );
    assert_eq!(
        policy.evaluate_at(&ops, &db, &pg, until).action,
        Action::Deny
    );

    // Compiled filters and peers follow the clock.
    let all = devices();
    let web_rules = |now| policy.compile(&all, "web1", 3, now).rules;
    assert_eq!(web_rules(monday_9).len(), 1);
    assert!(web_rules(monday_19).is_empty());
    assert_eq!(policy.peers_of(&all, "web1", monday_9), ["ops1"]);
    assert!(policy.peers_of(&all, "web1", monday_19).is_empty());
    assert_eq!(policy.peers_of(&all, "db1", until - 1), ["ops1"]);
    assert!(policy.peers_of(&all, "db1", until).is_empty());

    // The server rebuilds at each boundary.
    assert_eq!(policy.next_change(MONDAY), Some(MONDAY + 8 * HOUR));
    assert_eq!(policy.next_change(monday_9), Some(MONDAY + 18 * HOUR));
    assert_eq!(
        policy.next_change(MONDAY + 30 * HOUR),
        Some(MONDAY + 32 * HOUR)
    );
    assert_eq!(policy.next_change(MONDAY + 35 * HOUR), Some(until));
    assert_eq!(Policy::empty().next_change(MONDAY), None);
}

#[test]
fn time_mistakes_name_line_and_column() {
    let cases = [
        (
            r#"schedule = { days = ["mon-fry"], hours = "08:00-18:00" }"#,
            "not a day",
        ),
        (
            r#"schedule = { days = ["mon"], hours = "8am-6pm" }"#,
            "not a time of day",
        ),
        (
            r#"schedule = { days = ["mon"], hour = "08:00-18:00" }"#,
            "unknown field",
        ),
        (
            "until = 2026-12-31",
            "needs a date, a time and a UTC offset",
        ),
        (
            "until = 2026-12-31T10:00:00",
            "needs a date, a time and a UTC offset",
        ),
        ("until = \"tomorrow\"", "datetime"),
    ];
    for (line, needle) in cases {
        let text = format!(
            "[segments]\nops = {{ tags = [\"ops\"] }}\n\n[[rules]]\nname = \"r\"\nfrom = [\"ops\"]\nto = [\"ops\"]\nports = [\"any\"]\n{line}\n"
        );
        let error = Policy::parse(&text).unwrap_err();
        assert_eq!(error.line, 9, "{line}: {error}");
        assert!(error.message.contains(needle), "{line}: {error}");
    }
    let failing = TIMED.replace("2026-11-28T09:00:00Z", "2026-11-27T09:00:00Z");
    let error = Policy::parse(&failing).unwrap_err();
    assert!(
        error.message.contains("test #2 (from tag:ops to tag:web on tcp/22 at 2026-11-27T09:00:00Z) expected deny but got allow by rule `ops-ssh-office-hours`"),
        "{error}"
    );
}

const MONITORED: &str = r#"
[segments]
ops = { tags = ["ops"] }
web = { tags = ["web"] }
db = { tags = ["db"] }
new = { tags = ["new"], monitor = true }

[[rules]]
name = "no-ops-to-db"
from = ["ops"]
to = ["db"]
ports = ["any"]
action = "deny"
monitor = true

[[rules]]
name = "web-to-db"
from = ["web"]
to = ["db"]
ports = ["tcp/5432"]

[[rules]]
name = "no-web-to-new-ssh"
from = ["web"]
to = ["new"]
ports = ["tcp/22"]
action = "deny"
"#;

#[test]
fn monitor_mode_passes_and_marks_what_would_be_dropped() {
    let policy = Policy::parse(MONITORED).unwrap();
    let decision = policy.evaluate(&ep("tag:ops"), &ep("tag:db"), &port("tcp/5432"));
    assert_eq!(decision.action, Action::Deny);
    assert!(decision.monitor);
    assert_eq!(decision.rule.as_deref(), Some("no-ops-to-db"));
    // A monitored segment monitors its default deny and its deny rules.
    let to_new = policy.evaluate(&ep("tag:db"), &ep("tag:new"), &port("udp/53"));
    assert_eq!(
        (to_new.action, to_new.rule.as_deref(), to_new.monitor),
        (Action::Deny, None, true)
    );
    let ssh = policy.evaluate(&ep("tag:web"), &ep("tag:new"), &port("tcp/22"));
    assert!(ssh.monitor);
    // Enforced elsewhere.
    let enforced = policy.evaluate(&ep("tag:ops"), &ep("tag:web"), &port("tcp/80"));
    assert!(!enforced.monitor);

    let all = devices();
    let db = policy.compile(&all, "db1", 1, 0).rules;
    assert_eq!(db[0].name, "no-ops-to-db");
    assert!(db[0].monitor && db[0].action == Action::Deny);
    assert!(!db[1].monitor);
    let new = policy.compile(&all, "new1", 1, 0).rules;
    let names: Vec<&str> = new.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["no-web-to-new-ssh", "monitor:new"]);
    assert!(new.iter().all(|r| r.monitor));
    let catch_all = &new[1];
    assert_eq!(catch_all.protocol, Protocol::Any);
    assert_eq!(catch_all.sources.len(), 2);
    assert_eq!(
        catch_all.destinations,
        vec!["100.64.0.4/32".parse().unwrap()]
    );
    // Monitored devices peer with everyone; a monitored deny makes a tunnel.
    assert_eq!(policy.peers_of(&all, "new1", 0), ["db1", "ops1", "web1"]);
    assert_eq!(policy.peers_of(&all, "ops1", 0), ["db1", "new1"]);
}

#[test]
fn monitor_on_an_allow_rule_is_refused() {
    let text = "[segments]\nops = { tags = [\"ops\"] }\n\n[[rules]]\nname = \"r\"\nfrom = [\"ops\"]\nto = [\"ops\"]\nports = [\"any\"]\nmonitor = true\n";
    let error = Policy::parse(text).unwrap_err();
    assert_eq!((error.line, error.column), (9, 11));
    assert!(
        error.message.contains("`monitor` applies to deny rules"),
        "{error}"
    );
}

#[test]
fn unreachable_rules_are_warned_about() {
    let text = r#"[segments]
ops = { tags = ["ops"] }
web = { tags = ["web"] }
db = { tags = ["db"] }

[[rules]]
name = "no-ssh"
from = ["ops"]
to = ["web", "db"]
ports = ["tcp/22"]
action = "deny"

[[rules]]
name = "ops-web"
from = ["ops"]
to = ["web"]
ports = ["tcp/80"]

[[rules]]
name = "ops-ssh-web"
from = ["ops"]
to = ["web"]
ports = ["tcp/22"]

[[rules]]
name = "ops-web-again"
from = ["ops"]
to = ["web"]
ports = ["tcp/22", "tcp/80"]

[[rules]]
name = "ops-db-all"
from = ["ops"]
to = ["db"]
ports = ["tcp"]
"#;
    let policy = Policy::parse(text).unwrap();
    let warnings: Vec<String> = policy.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert_eq!(
        warnings[0],
        "policy line 20, column 8: warning: rule `ops-ssh-web` can never match: earlier rule `no-ssh` (deny) already decides every flow it covers; this allow rule overlaps rules with the opposite action; move it above them or remove it"
    );
    assert!(
        warnings[1].starts_with("policy line 26, column 8: warning: rule `ops-web-again` can never match: earlier rules `no-ssh` (deny), `ops-web` (allow) already decide"),
        "{}",
        warnings[1]
    );
    // A rule with a time condition may not apply, so it shadows nothing:
    // `ops-ssh-web` becomes reachable, and with `ops-web` it still hides
    // `ops-web-again`.
    let timed = text.replace(
        "ports = [\"tcp/22\"]\naction = \"deny\"",
        "ports = [\"tcp/22\"]\naction = \"deny\"\nuntil = 2030-01-01T00:00:00Z",
    );
    let policy = Policy::parse(&timed).unwrap();
    let warnings: Vec<&str> = policy
        .warnings()
        .iter()
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(
        warnings,
        [
            "rule `ops-web-again` can never match: earlier rules `ops-web` (allow), `ops-ssh-web` (allow) already decide every flow it covers; move it above them or remove it"
        ]
    );
}
