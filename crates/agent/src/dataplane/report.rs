//! What the data plane tells others: the status socket's answer, the
//! counters for the flow log, and the log lines of monitored flows.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ztmesh_filter::{FlowEvent, FlowVerdict};

use super::{Engine, Io};
use crate::flowlog::CounterSnapshot;
use crate::status::{PeerStatus, Status};
use crate::tunio::TunIo;

/// The rule counters as last taken for a snapshot, and the (policy
/// version, counter generation) they were taken at.
#[derive(Default)]
pub(super) struct TakenRuleHits {
    generation: Option<(u64, u64)>,
    hits: Arc<[(Arc<str>, u64)]>,
}

impl Engine {
    pub(super) fn counter_snapshot(&mut self) -> CounterSnapshot {
        let counters = self.filter.counters();
        // 1,200 rules make a list of 1,200 shared names: taken anew only
        // when a count changed (a new flow), not every second.
        let generation = (self.filter.version(), counters.rule_hits_generation());
        if self.rule_hits.generation != Some(generation) {
            self.rule_hits = TakenRuleHits {
                generation: Some(generation),
                hits: counters.rule_hits_shared().collect(),
            };
        }
        let (rx_bytes, tx_bytes) = self.peers.iter().fold((0u64, 0u64), |(rx, tx), p| {
            let (_, sent, received, _, _) = p.tunn.stats();
            (rx + received as u64, tx + sent as u64)
        });
        CounterSnapshot {
            policy_version: self.filter.version(),
            rule_hits: Arc::clone(&self.rule_hits.hits),
            drops: counters
                .iter_drops()
                .map(|(reason, n)| (reason.as_str(), n))
                .collect(),
            accepted_inbound: counters.accepted_inbound(),
            monitored: counters.monitored(),
            events_lost: counters.flow_events_lost() + self.flow_events_dropped,
            rx_bytes,
            tx_bytes,
        }
    }

    pub(super) fn status<T: TunIo>(&self, io: &Io<T>, control_connected: bool) -> Status {
        let counters = self.filter.counters();
        let mut peers: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|p| {
                let (handshake, tx, rx, _, _) = p.tunn.stats();
                PeerStatus {
                    name: p.info.name.clone(),
                    public_key: STANDARD.encode(p.info.public_key),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    path: match (handshake.is_some(), p.route.via_relay, p.endpoint.is_some()) {
                        (true, true, _) => "relay",
                        (true, false, true) => "direct",
                        _ => "none",
                    }
                    .to_owned(),
                    relay_data_packets: p.route.relay_data,
                    connected_socket: p
                        .endpoint
                        .is_some_and(|e| self.connected.socket_for(e).is_some()),
                    endpoints: p.info.endpoints.iter().map(ToString::to_string).collect(),
                    rtt_ms: p.path.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    allowed_ips: p.info.allowed_ips.iter().map(ToString::to_string).collect(),
                    last_handshake_secs: handshake.map(|d| d.as_secs()),
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        Status {
            name: self.self_node.name.clone(),
            addresses: self
                .self_node
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
            public_key: STANDARD.encode(self.public.as_bytes()),
            listen_port: io.udp.local_addr().map(|a| a.port()).unwrap_or(0),
            control_connected,
            relay_connected: self.paths.relay_up(),
            relay_transport: self.paths.relay_link().as_str().to_owned(),
            relay_mtu: self.paths.relay_mtu(),
            policy_version: self.filter.version(),
            peers,
            drops: counters
                .iter_drops()
                .map(|(reason, n)| (reason.as_str().to_owned(), n))
                .collect(),
            accepted_inbound: counters.accepted_inbound(),
            accepted_outbound: counters.accepted_outbound(),
            accepted_inbound_bytes: counters.accepted_inbound_bytes(),
            accepted_outbound_bytes: counters.accepted_outbound_bytes(),
            dropped_bytes: counters
                .iter_drops()
                .map(|(reason, _)| (reason.as_str().to_owned(), counters.dropped_bytes(reason)))
                .collect(),
            monitored: counters.monitored(),
            rule_hits: counters
                .rule_hits()
                .map(|(rule, n)| (rule.to_owned(), n))
                .collect(),
            flows: self.filter.flow_count(),
            public_endpoint: self.discovery.public().map(|a| a.to_string()),
        }
    }
}

/// Logs the flows that monitored deny rules let through, each at info
/// level, up to 20 a call, then a count.
pub(super) fn log_monitored(events: &[FlowEvent]) {
    const LOGGED_PER_CALL: usize = 20;
    let flows: Vec<&FlowEvent> = events
        .iter()
        .filter(|e| e.verdict == FlowVerdict::Monitored)
        .collect();
    for flow in flows.iter().take(LOGGED_PER_CALL) {
        let p = &flow.packet;
        tracing::info!(
            rule = flow.rule.as_deref().unwrap_or_default(),
            src = %p.src,
            dst = %p.dst,
            proto = p.proto,
            dst_port = p.dst_port,
            "monitor: flow would be dropped by this rule; passed (monitor mode)"
        );
    }
    if flows.len() > LOGGED_PER_CALL {
        tracing::info!(
            more = flows.len() - LOGGED_PER_CALL,
            "monitor: more flows would have been dropped; see `ztmesh status` for counts"
        );
    }
}
