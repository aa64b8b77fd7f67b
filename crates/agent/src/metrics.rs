//! The daemon's Prometheus metrics, rendered from its status: packets and
//! bytes by direction, verdict and drop reason, rule hits, peers, policy.

use ztmesh_metrics::Exposition;

use crate::status::Status;

/// One scrape; `None` when the data plane did not answer (then only
/// `ztmesh_daemon_up 0`).
pub fn render(status: Option<&Status>) -> String {
    let mut e = Exposition::new();
    let Some(s) = status else {
        e.gauge(
            "ztmesh_daemon_up",
            "Whether the data plane answered.",
            &[],
            0.0,
        );
        return e.finish();
    };
    e.gauge(
        "ztmesh_daemon_up",
        "Whether the data plane answered.",
        &[],
        1.0,
    );
    e.gauge(
        "ztmesh_daemon_policy_version",
        "Policy version of the filter in force (0: none, nothing passes).",
        &[],
        s.policy_version as f64,
    );
    e.gauge(
        "ztmesh_daemon_control_connected",
        "Whether the sync stream to the server is up.",
        &[],
        if s.control_connected { 1.0 } else { 0.0 },
    );
    e.gauge(
        "ztmesh_daemon_peers",
        "Peers in the peer table.",
        &[],
        s.peers.len() as f64,
    );
    e.gauge(
        "ztmesh_daemon_tracked_flows",
        "Flows in the connection tracking table.",
        &[],
        s.flows as f64,
    );
    for (direction, packets, bytes) in [
        ("inbound", s.accepted_inbound, s.accepted_inbound_bytes),
        ("outbound", s.accepted_outbound, s.accepted_outbound_bytes),
    ] {
        let labels = [
            ("direction", direction),
            ("verdict", "accepted"),
            ("reason", ""),
        ];
        e.counter(
            "ztmesh_daemon_packets_total",
            "Packets by direction, verdict and drop reason.",
            &labels,
            packets,
        );
        e.counter(
            "ztmesh_daemon_bytes_total",
            "Bytes by direction, verdict and drop reason.",
            &labels,
            bytes,
        );
    }
    for (reason, packets) in &s.drops {
        let labels = [
            ("direction", "inbound"),
            ("verdict", "dropped"),
            ("reason", reason.as_str()),
        ];
        e.counter(
            "ztmesh_daemon_packets_total",
            "Packets by direction, verdict and drop reason.",
            &labels,
            *packets,
        );
        let bytes = s.dropped_bytes.get(reason).copied().unwrap_or(0);
        e.counter(
            "ztmesh_daemon_bytes_total",
            "Bytes by direction, verdict and drop reason.",
            &labels,
            bytes,
        );
    }
    e.counter(
        "ztmesh_daemon_monitored_flows_total",
        "New flows that monitored deny rules would have dropped and passed.",
        &[],
        s.monitored,
    );
    for (rule, hits) in &s.rule_hits {
        e.counter(
            "ztmesh_daemon_rule_hits_total",
            "New flows decided by each rule.",
            &[("rule", rule.as_str())],
            *hits,
        );
    }
    for peer in &s.peers {
        let labels = [("peer", peer.name.as_str())];
        e.counter(
            "ztmesh_daemon_peer_rx_bytes_total",
            "Bytes received from each peer (current session counters).",
            &labels,
            peer.rx_bytes,
        );
        e.counter(
            "ztmesh_daemon_peer_tx_bytes_total",
            "Bytes sent to each peer (current session counters).",
            &labels,
            peer.tx_bytes,
        );
        if let Some(age) = peer.last_handshake_secs {
            e.gauge(
                "ztmesh_daemon_peer_handshake_age_seconds",
                "Seconds since the last completed handshake with each peer.",
                &labels,
                age as f64,
            );
        }
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_becomes_metrics() {
        let mut status = Status {
            policy_version: 4,
            accepted_inbound: 10,
            accepted_inbound_bytes: 1000,
            monitored: 2,
            ..Status::default()
        };
        status.drops.insert("no_rule".into(), 3);
        status.dropped_bytes.insert("no_rule".into(), 180);
        status.rule_hits.insert("web".into(), 5);
        let text = render(Some(&status));
        for line in [
            "ztmesh_daemon_up 1",
            "ztmesh_daemon_policy_version 4",
            "ztmesh_daemon_packets_total{direction=\"inbound\",verdict=\"accepted\",reason=\"\"} 10",
            "ztmesh_daemon_bytes_total{direction=\"inbound\",verdict=\"accepted\",reason=\"\"} 1000",
            "ztmesh_daemon_packets_total{direction=\"inbound\",verdict=\"dropped\",reason=\"no_rule\"} 3",
            "ztmesh_daemon_bytes_total{direction=\"inbound\",verdict=\"dropped\",reason=\"no_rule\"} 180",
            "ztmesh_daemon_rule_hits_total{rule=\"web\"} 5",
            "ztmesh_daemon_monitored_flows_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert_eq!(render(None).lines().last(), Some("ztmesh_daemon_up 0"));
    }
}
