//! The server's Prometheus metrics: devices by standing, connected streams,
//! the policy in force, how far daemons lag behind it, and the counters each
//! daemon last reported (packets and bytes by verdict and reason, rule hits).

use std::collections::HashMap;

use ztmesh_metrics::Exposition;

use crate::hub::Hub;
use crate::netmap::standing;
use crate::store::unix_now;

/// One scrape.
pub fn render(hub: &Hub) -> String {
    let state = hub.current();
    let now = unix_now();
    let mut e = Exposition::new();
    let mut by_standing: HashMap<&str, u64> = HashMap::new();
    let mut online = 0u64;
    for device in state.devices() {
        *by_standing
            .entry(standing(device, state.users(), now).as_str())
            .or_default() += 1;
        if hub.is_online(&device.id) {
            online += 1;
        }
    }
    for standing in [
        "active",
        "pending-approval",
        "revoked",
        "expired",
        "user-disabled",
    ] {
        let count = by_standing.get(standing).copied().unwrap_or(0);
        e.gauge(
            "ztmesh_server_devices",
            "Enrolled devices by standing.",
            &[("standing", standing)],
            count as f64,
        );
    }
    e.gauge(
        "ztmesh_server_connected_devices",
        "Devices with a live sync stream to this server.",
        &[],
        online as f64,
    );
    let version = state.policy_version();
    e.gauge(
        "ztmesh_server_policy_version",
        "Policy version in force (0: none).",
        &[],
        version as f64,
    );
    e.gauge(
        "ztmesh_server_policy_rules",
        "Rules in the policy in force.",
        &[],
        state.policy().rule_count() as f64,
    );
    let reports = hub.telemetry().snapshot();
    let behind = reports
        .iter()
        .filter(|(id, t)| hub.is_online(id) && t.report.policy_version < version)
        .count();
    e.gauge(
        "ztmesh_server_devices_behind_policy",
        "Connected devices whose last report shows an older policy version than the one in force (sync lag).",
        &[],
        behind as f64,
    );
    for (_, t) in &reports {
        let device = t.name.as_str();
        let r = &t.report;
        let labels = [("device", device)];
        e.gauge(
            "ztmesh_device_report_age_seconds",
            "Seconds since the device's last counter report (an idle device, with nothing new to count, reports every 30 s).",
            &labels,
            (now - t.received_at).max(0) as f64,
        );
        e.gauge(
            "ztmesh_device_policy_version",
            "Policy version the device last reported applying.",
            &labels,
            r.policy_version as f64,
        );
        e.counter(
            "ztmesh_device_accepted_inbound_packets_total",
            "Inbound packets the device's filter accepted.",
            &labels,
            r.accepted_inbound,
        );
        e.counter(
            "ztmesh_device_monitored_flows_total",
            "New flows monitored deny rules passed on the device.",
            &labels,
            r.monitored,
        );
        for drop in &r.drops {
            e.counter(
                "ztmesh_device_dropped_packets_total",
                "Packets the device dropped, by reason.",
                &[("device", device), ("reason", &drop.name)],
                drop.value,
            );
        }
        for hit in &r.rule_hits {
            e.counter(
                "ztmesh_device_rule_hits_total",
                "New flows decided by each rule on the device.",
                &[("device", device), ("rule", &hit.name)],
                hit.value,
            );
        }
        e.gauge(
            "ztmesh_device_tunnel_rx_bytes",
            "Bytes received over the device's current tunnels.",
            &labels,
            r.rx_bytes as f64,
        );
        e.gauge(
            "ztmesh_device_tunnel_tx_bytes",
            "Bytes sent over the device's current tunnels.",
            &labels,
            r.tx_bytes as f64,
        );
        e.counter(
            "ztmesh_device_flow_records_lost_total",
            "Flow records the device could not report (queues full, over the cap).",
            &labels,
            r.records_lost,
        );
    }
    e.finish()
}
