use ztmesh_filter::{DropReason, PacketInfo};

use super::*;

fn event(sport: u16, dport: u16, verdict: FlowVerdict, rule: Option<&str>) -> FlowEvent {
    FlowEvent {
        rule: rule.map(str::to_owned),
        verdict,
        packet: PacketInfo {
            src: "100.64.0.1".parse().unwrap(),
            dst: "100.64.0.2".parse().unwrap(),
            proto: 6,
            src_port: sport,
            dst_port: dport,
            tcp_flags: 2,
            icmp_type: None,
        },
        bytes: 60,
    }
}

#[test]
fn same_flow_events_aggregate_and_drops_come_first() {
    let mut aggregator = Aggregator::default();
    let denied = FlowVerdict::Dropped(DropReason::Denied);
    let batch = FlowBatch {
        events: vec![
            event(1000, 443, FlowVerdict::Allowed, Some("web")),
            event(2000, 22, denied, Some("no-ssh")),
            event(2000, 22, denied, Some("no-ssh")),
            event(3000, 5432, FlowVerdict::Monitored, Some("watch-db")),
        ],
        counters: CounterSnapshot {
            policy_version: 7,
            rule_hits: vec![("web".into(), 1), ("no-ssh".into(), 2)].into(),
            events_lost: 3,
            ..CounterSnapshot::default()
        },
    };
    aggregator.add(batch, 100);
    aggregator.add(
        FlowBatch {
            events: vec![event(2000, 22, denied, Some("no-ssh"))],
            counters: CounterSnapshot {
                policy_version: 7,
                ..CounterSnapshot::default()
            },
        },
        101,
    );
    let report = aggregator.take_report(50);
    let summary: Vec<(&str, u32, u64, u64, i64, i64)> = report
        .records
        .iter()
        .map(|r| {
            (
                r.verdict.as_str(),
                r.dst_port,
                r.packets,
                r.bytes,
                r.first_seen,
                r.last_seen,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("denied", 22, 3, 180, 100, 101),
            ("monitored", 5432, 1, 60, 100, 100),
            ("allowed", 443, 1, 60, 100, 100),
        ]
    );
    assert_eq!(report.records[0].rule, "no-ssh");
    assert_eq!((report.policy_version, report.started_at), (7, 50));
    // Counters are the latest snapshot.
    assert!(report.rule_hits.is_empty());
    assert_eq!(report.records_lost, 0);
    assert!(aggregator.take_report(50).records.is_empty());
}

#[test]
fn reports_are_capped_and_the_rest_counted() {
    let mut aggregator = Aggregator::default();
    let events = (0..MAX_AGGREGATED as u32 + 10)
        .map(|i| {
            event(
                (i % 60000) as u16,
                (i / 60000) as u16 + 1,
                FlowVerdict::Dropped(DropReason::NoRule),
                None,
            )
        })
        .collect();
    aggregator.add(
        FlowBatch {
            events,
            counters: CounterSnapshot {
                events_lost: 5,
                ..CounterSnapshot::default()
            },
        },
        1,
    );
    let report = aggregator.take_report(0);
    assert_eq!(report.records.len(), MAX_RECORDS);
    let expected_lost = 5 + 10 + (MAX_AGGREGATED - MAX_RECORDS) as u64;
    assert_eq!(report.records_lost, expected_lost);
    aggregator.count_lost(MAX_RECORDS);
    assert_eq!(
        aggregator.take_report(0).records_lost,
        expected_lost + MAX_RECORDS as u64
    );
}

#[test]
fn only_records_or_changed_counters_are_news_after_a_delivery() {
    let mut aggregator = Aggregator::default();
    let counters = CounterSnapshot {
        policy_version: 3,
        rule_hits: vec![("web".into(), 4)].into(),
        ..CounterSnapshot::default()
    };
    let quiet = |counters: &CounterSnapshot| FlowBatch {
        events: Vec::new(),
        counters: counters.clone(),
    };
    aggregator.add(quiet(&counters), 10);
    assert!(aggregator.has_news(), "nothing delivered yet");
    aggregator.take_report(0);
    aggregator.delivered();
    assert!(!aggregator.has_news());
    aggregator.add(quiet(&counters), 11);
    assert!(!aggregator.has_news(), "the same counters again");
    let mut more = counters.clone();
    more.rule_hits = vec![("web".into(), 5)].into();
    aggregator.add(quiet(&more), 12);
    assert!(aggregator.has_news(), "a rule counted a new flow");
    aggregator.take_report(0);
    aggregator.delivered();
    aggregator.add(
        FlowBatch {
            events: vec![event(1000, 443, FlowVerdict::Allowed, Some("web"))],
            counters: more.clone(),
        },
        13,
    );
    assert!(aggregator.has_news(), "a flow record");
    aggregator.take_report(0);
    aggregator.count_lost(2);
    assert!(aggregator.has_news(), "a failed delivery's losses");
}

#[test]
fn news_goes_at_once_but_paced_and_an_idle_daemon_only_sends_heartbeats() {
    let interval = Duration::from_secs(2);
    let now = tokio::time::Instant::now();
    let ago = |secs: u64| now.checked_sub(Duration::from_secs(secs)).unwrap();
    // Nothing to report before the first counters: no timer at all.
    assert_eq!(report_due(false, true, None, None, interval), None);
    // The first news goes at once.
    assert!(report_due(true, true, None, None, interval).unwrap() <= tokio::time::Instant::now());
    // News a second after a try waits out the interval.
    assert_eq!(
        report_due(true, true, Some(ago(1)), Some(ago(1)), interval),
        Some(ago(1) + interval)
    );
    // Nothing new: a heartbeat 30 s after the last delivery, not sooner.
    assert_eq!(
        report_due(true, false, Some(ago(10)), Some(ago(10)), interval),
        Some(ago(10) + HEARTBEAT)
    );
    // A heartbeat overdue goes at once.
    assert!(report_due(true, false, Some(ago(40)), Some(ago(40)), interval).unwrap() <= now);
}

#[test]
fn rules_without_hits_are_left_out_of_the_report() {
    let mut aggregator = Aggregator::default();
    let rules: Vec<(Arc<str>, u64)> = (0..1000)
        .map(|i| (Arc::from(format!("rule-{i}")), u64::from(i == 7) * 3))
        .chain([(Arc::from("web"), 1)])
        .collect();
    aggregator.add(
        FlowBatch {
            events: Vec::new(),
            counters: CounterSnapshot {
                rule_hits: rules.into(),
                drops: vec![("denied", 0)],
                ..CounterSnapshot::default()
            },
        },
        10,
    );
    let report = aggregator.take_report(0);
    let hits: Vec<(&str, u64)> = report
        .rule_hits
        .iter()
        .map(|c| (c.name.as_str(), c.value))
        .collect();
    assert_eq!(hits, [("rule-7", 3), ("web", 1)]);
    // Drop reasons are few and fixed: all of them go, zeros too.
    assert_eq!(report.drops.len(), 1);
}
