//! The data plane event loop: one UDP socket, one TUN device, one boringtun
//! `Tunn` per peer. Receive order: decrypt -> cryptokey routing -> stateful
//! filter -> TUN. Send order: route by allowed IPs -> filter (conntrack) ->
//! encrypt -> UDP.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use x25519_dalek::{PublicKey, StaticSecret};
use ztmesh_filter::{
    DropReason, Filter, FilterConfig, FilterLimits, FlowEvent, FlowVerdict, Verdict,
};

use crate::discovery::Discovery;
use crate::flowlog::{CounterSnapshot, FlowBatch};

use crate::netmap::{NetMap, PeerDiff, SelfNode};
use crate::peers::{PeerTable, Slot};
use crate::status::{PeerStatus, Status, StatusRequest};
use crate::tunio::TunIo;

/// Largest datagram or packet handled (plus room for WireGuard overhead).
const BUF_SIZE: usize = 65_536 + 256;
/// How often boringtun's timers run.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// WireGuard message type of a cookie reply.
const COOKIE_REPLY: u8 = 3;
/// Handshakes per second before the rate limiter answers with cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// How long our previous static key still answers handshakes after a rotation.
const OLD_KEY_LIFETIME: Duration = Duration::from_secs(120);

/// The I/O endpoints, kept apart from the state so the loop can borrow both.
pub struct Io<T> {
    /// The TUN side.
    pub tun: T,
    /// The WireGuard UDP socket.
    pub udp: UdpSocket,
}

/// The channels between the loop and the daemon's other tasks.
pub struct Links {
    /// Network maps from the control client.
    pub netmap: watch::Receiver<NetMap>,
    /// Status socket requests.
    pub status_requests: mpsc::Receiver<StatusRequest>,
    /// New static keys from key rotation.
    pub rekeys: mpsc::Receiver<StaticSecret>,
    /// Flow events and counters for the flow log, sent without waiting.
    pub flow_reports: mpsc::Sender<FlowBatch>,
    /// Whether the control stream is up (for status).
    pub connected: Arc<AtomicBool>,
    /// The public endpoint learned over STUN, for the reporter.
    pub public_endpoint: watch::Sender<Option<SocketAddr>>,
}

/// Everything the loop owns besides the I/O.
struct Engine {
    private: StaticSecret,
    public: PublicKey,
    peers: PeerTable,
    filter: Filter,
    filter_config: FilterConfig,
    self_node: SelfNode,
    rate_limiter: Arc<RateLimiter>,
    /// Our previous static key for a while after a rotation: peers that
    /// have not yet heard of the new key still reach us.
    old_keys: Option<OldKeys>,
    out: Vec<u8>,
    /// Flow events dropped because the flow log's queue was full.
    flow_events_dropped: u64,
    /// Public endpoint discovery (STUN) from the WireGuard socket.
    discovery: Discovery,
    /// Where the public endpoint goes to be reported.
    public_endpoint: watch::Sender<Option<SocketAddr>>,
}

struct OldKeys {
    private: StaticSecret,
    public: PublicKey,
    rate_limiter: Arc<RateLimiter>,
    since: Instant,
}

enum Event {
    Tun(std::io::Result<usize>),
    Udp(std::io::Result<(usize, SocketAddr)>),
    Tick,
    NetMap,
    Rekey(StaticSecret),
    Status(StatusRequest),
    Stop,
}

/// Runs the data plane until `shutdown` fires or an I/O endpoint fails.
pub async fn run<T: TunIo>(
    io: Io<T>,
    private: StaticSecret,
    links: Links,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Links {
        mut netmap,
        mut status_requests,
        mut rekeys,
        flow_reports,
        connected,
        public_endpoint,
    } = links;
    let public = PublicKey::from(&private);
    let rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
    let mut engine = Engine {
        peers: PeerTable::new(private.clone(), Arc::clone(&rate_limiter)),
        private,
        public,
        filter: Filter::new(FilterLimits::default()),
        filter_config: FilterConfig::default(),
        self_node: SelfNode::default(),
        rate_limiter,
        old_keys: None,
        out: vec![0; BUF_SIZE],
        flow_events_dropped: 0,
        discovery: Discovery::default(),
        public_endpoint,
    };
    let initial = netmap.borrow_and_update().clone();
    engine.apply_netmap(&io, &initial).await;
    let mut tun_buf = vec![0u8; BUF_SIZE];
    let mut udp_buf = vec![0u8; BUF_SIZE];
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    loop {
        // The select only picks the event; handling happens after it so the
        // receive futures no longer borrow the buffers.
        let event = tokio::select! {
            r = io.tun.recv(&mut tun_buf) => Event::Tun(r),
            r = io.udp.recv_from(&mut udp_buf) => Event::Udp(r),
            _ = tick.tick() => Event::Tick,
            r = netmap.changed() => if r.is_ok() { Event::NetMap } else { Event::Stop },
            Some(reply) = status_requests.recv() => Event::Status(reply),
            Some(key) = rekeys.recv() => Event::Rekey(key),
            _ = shutdown.changed() => Event::Stop,
        };
        match event {
            Event::Tun(r) => {
                let n = r?;
                if let Some(packet) = tun_buf.get(..n) {
                    engine.on_tun(&io, packet).await;
                }
            }
            Event::Udp(Ok((n, from))) => {
                if let Some(datagram) = udp_buf.get(..n) {
                    engine.on_udp(&io, from, datagram).await;
                }
            }
            Event::Udp(Err(e)) => {
                // ICMP port unreachable from a peer surfaces here on Linux; not fatal.
                tracing::debug!(error = %e, "udp receive error");
            }
            Event::Tick => {
                ticks += 1;
                engine.on_tick(&io).await;
                if ticks.is_multiple_of(4) {
                    engine.rate_limiter.reset_count();
                    if let Some(old) = &engine.old_keys {
                        old.rate_limiter.reset_count();
                    }
                    engine.filter.expire(Instant::now());
                    engine.hand_over_flows(&flow_reports);
                    engine.ask_stun(&io).await;
                }
            }
            Event::NetMap => {
                let map = netmap.borrow_and_update().clone();
                engine.apply_netmap(&io, &map).await;
            }
            Event::Rekey(key) => engine.rekey(&io, key).await,
            Event::Status(reply) => {
                let _ = reply.send(engine.status(&io, connected.load(Ordering::Relaxed)));
            }
            Event::Stop => return Ok(()),
        }
    }
}

impl Engine {
    async fn on_tun<T: TunIo>(&mut self, io: &Io<T>, packet: &[u8]) {
        // The kernel's own IPv6 chatter and traffic to non-peers ends here.
        let Some(dst) = ztmesh_filter::destination_address(packet) else {
            return;
        };
        let Some(key) = self.peers.route(dst) else {
            return;
        };
        if let Verdict::Drop(_) = self.filter.outbound(packet, Instant::now()) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        match peer.sending_tunn().encapsulate(packet, &mut self.out) {
            TunnResult::WriteToNetwork(datagram) => {
                if let Some(endpoint) = peer.endpoint {
                    send(&io.udp, datagram, endpoint).await;
                }
            }
            TunnResult::Err(e) => {
                tracing::debug!(peer = %peer.info.name, error = ?e, "encapsulate failed")
            }
            _ => {}
        }
    }

    async fn on_udp<T: TunIo>(&mut self, io: &Io<T>, from: SocketAddr, datagram: &[u8]) {
        if ztmesh_stun::is_stun(datagram) {
            if let Some(public) = self.discovery.on_datagram(from, datagram, Instant::now()) {
                self.public_endpoint
                    .send_if_modified(|known| known.replace(public) != Some(public));
            }
            return;
        }
        // MAC and load check before any expensive work (the X25519 in
        // parse_handshake_anon): under a handshake flood this answers with
        // cookies instead of spending a DH per junk packet.
        let mut packet = self
            .rate_limiter
            .verify_packet(Some(from.ip()), datagram, &mut self.out);
        if matches!(packet, Err(TunnResult::Err(_)))
            && let Some(old) = &self.old_keys
        {
            // Sent to our previous public key by a peer that has not heard
            // of the rotation yet.
            packet = old
                .rate_limiter
                .verify_packet(Some(from.ip()), datagram, &mut self.out);
        }
        let packet = match packet {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                send(&io.udp, cookie, from).await;
                return;
            }
            Err(_) => {
                self.filter
                    .record_drop(DropReason::UnknownPeer, datagram.len());
                return;
            }
        };
        let target = match packet {
            Packet::HandshakeInit(p) => {
                match parse_handshake_anon(&self.private, &self.public, &p) {
                    Ok(h) => Some((h.peer_static_public, Slot::Current)),
                    Err(_) => self.old_keys.as_ref().and_then(|old| {
                        parse_handshake_anon(&old.private, &old.public, &p)
                            .ok()
                            .map(|h| (h.peer_static_public, Slot::Retiring))
                    }),
                }
            }
            Packet::HandshakeResponse(p) => self.peers.by_receiver_index(p.receiver_idx),
            Packet::PacketCookieReply(p) => self.peers.by_receiver_index(p.receiver_idx),
            Packet::PacketData(p) => self.peers.by_receiver_index(p.receiver_idx),
        };
        let Some((peer, slot)) = target.and_then(|(k, slot)| Some((self.peers.get_mut(&k)?, slot)))
        else {
            self.filter
                .record_drop(DropReason::UnknownPeer, datagram.len());
            return;
        };
        let allowed_ips = &peer.info.allowed_ips;
        let name = &peer.info.name;
        let endpoint = &mut peer.endpoint;
        let tunn = match slot {
            Slot::Current => &mut peer.tunn,
            Slot::Retiring => match &mut peer.retiring {
                Some(old) => &mut old.tunn,
                None => {
                    self.filter
                        .record_drop(DropReason::UnknownPeer, datagram.len());
                    return;
                }
            },
        };
        match tunn.decapsulate(Some(from.ip()), datagram, &mut self.out) {
            TunnResult::WriteToNetwork(reply) if reply.first() == Some(&COOKIE_REPLY) => {
                // An unauthenticated answer: send it, but do not let it move
                // the peer's endpoint.
                send(&io.udp, reply, from).await;
            }
            TunnResult::WriteToNetwork(reply) => {
                // A handshake message that decrypted: the peer proved its key.
                *endpoint = Some(from);
                send(&io.udp, reply, from).await;
                // Flush packets queued while the handshake was in progress.
                while let TunnResult::WriteToNetwork(queued) =
                    tunn.decapsulate(None, &[], &mut self.out)
                {
                    send(&io.udp, queued, from).await;
                }
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                *endpoint = Some(from);
                let allowed = allowed_ips.iter().any(|n| n.contains(&IpAddr::V4(src)));
                deliver(io, &mut self.filter, allowed, packet).await;
            }
            TunnResult::WriteToTunnelV6(packet, src) => {
                *endpoint = Some(from);
                let allowed = allowed_ips.iter().any(|n| n.contains(&IpAddr::V6(src)));
                deliver(io, &mut self.filter, allowed, packet).await;
            }
            TunnResult::Err(e) => {
                tracing::debug!(peer = %name, error = ?e, "decapsulate failed")
            }
            TunnResult::Done => {}
        }
    }

    async fn on_tick<T: TunIo>(&mut self, io: &Io<T>) {
        let now = Instant::now();
        self.peers.expire_retiring(now);
        if self
            .old_keys
            .as_ref()
            .is_some_and(|old| now.duration_since(old.since) >= OLD_KEY_LIFETIME)
        {
            self.old_keys = None;
        }
        for peer in self.peers.iter_mut() {
            if let TunnResult::WriteToNetwork(datagram) = peer.tunn.update_timers(&mut self.out)
                && let Some(endpoint) = peer.endpoint
            {
                send(&io.udp, datagram, endpoint).await;
            }
        }
    }

    async fn apply_netmap<T: TunIo>(&mut self, io: &Io<T>, map: &NetMap) {
        self.self_node = map.self_node.clone();
        self.discovery.set_server(map.stun);
        self.ask_stun(io).await;
        let diff = PeerDiff::between(self.peers.iter().map(|p| &p.info), map.peers.values());
        let added = self.peers.apply(diff);
        if map.filter != self.filter_config {
            self.filter.apply(map.filter.clone(), Instant::now());
            self.filter_config = map.filter.clone();
            tracing::info!(
                version = map.filter.version,
                rules = map.filter.rules.len(),
                "filter applied"
            );
        }
        // Start handshakes with new peers so tunnels are up before traffic.
        self.start_handshakes(io, &added).await;
    }

    async fn start_handshakes<T: TunIo>(&mut self, io: &Io<T>, keys: &[[u8; 32]]) {
        for key in keys {
            if let Some(peer) = self.peers.get_mut(key)
                && let Some(endpoint) = peer.endpoint
                && let TunnResult::WriteToNetwork(init) =
                    peer.tunn.format_handshake_initiation(&mut self.out, false)
            {
                send(&io.udp, init, endpoint).await;
            }
        }
    }

    /// Switches to a new static key (key rotation). Sessions of the old
    /// key carry traffic until the new handshakes complete; the old key
    /// keeps answering handshakes for a while.
    async fn rekey<T: TunIo>(&mut self, io: &Io<T>, private: StaticSecret) {
        let public = PublicKey::from(&private);
        let rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        let old_private = std::mem::replace(&mut self.private, private.clone());
        let old_public = std::mem::replace(&mut self.public, public);
        let old_limiter = std::mem::replace(&mut self.rate_limiter, Arc::clone(&rate_limiter));
        self.old_keys = Some(OldKeys {
            private: old_private,
            public: old_public,
            rate_limiter: old_limiter,
            since: Instant::now(),
        });
        let keys = self.peers.set_private(private, rate_limiter);
        tracing::info!(peers = keys.len(), "switched to the rotated WireGuard key");
        self.start_handshakes(io, &keys).await;
    }

    /// Sends a STUN request from the WireGuard socket when one is due.
    async fn ask_stun<T: TunIo>(&mut self, io: &Io<T>) {
        if let Some((server, request)) = self.discovery.due(Instant::now()) {
            send(&io.udp, &request, server).await;
        }
    }

    /// Takes the filter's flow events, logs the monitored ones, and hands
    /// them with the counters to the flow log without waiting: when its
    /// queue is full the batch is dropped and counted.
    fn hand_over_flows(&mut self, reports: &mpsc::Sender<FlowBatch>) {
        let events = self.filter.take_flow_events();
        log_monitored(&events);
        let batch = FlowBatch {
            counters: self.counter_snapshot(),
            events,
        };
        if let Err(
            mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch),
        ) = reports.try_send(batch)
        {
            self.flow_events_dropped += batch.events.len() as u64;
        }
    }

    fn counter_snapshot(&self) -> CounterSnapshot {
        let counters = self.filter.counters();
        let (rx_bytes, tx_bytes) = self.peers.iter().fold((0u64, 0u64), |(rx, tx), p| {
            let (_, sent, received, _, _) = p.tunn.stats();
            (rx + received as u64, tx + sent as u64)
        });
        CounterSnapshot {
            policy_version: self.filter.version(),
            rule_hits: counters
                .rule_hits()
                .map(|(rule, n)| (rule.to_owned(), n))
                .collect(),
            drops: counters
                .iter_drops()
                .map(|(reason, n)| (reason.as_str().to_owned(), n))
                .collect(),
            accepted_inbound: counters.accepted_inbound(),
            monitored: counters.monitored(),
            events_lost: counters.flow_events_lost() + self.flow_events_dropped,
            rx_bytes,
            tx_bytes,
        }
    }

    fn status<T: TunIo>(&self, io: &Io<T>, control_connected: bool) -> Status {
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
fn log_monitored(events: &[FlowEvent]) {
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

/// Cryptokey routing, then the filter, then the TUN.
async fn deliver<T: TunIo>(io: &Io<T>, filter: &mut Filter, source_allowed: bool, packet: &[u8]) {
    if packet.is_empty() {
        return;
    }
    if !source_allowed {
        filter.record_drop(DropReason::CryptokeyRouting, packet.len());
        return;
    }
    if filter.inbound(packet, Instant::now()) == Verdict::Accept
        && let Err(e) = io.tun.send(packet).await
    {
        tracing::debug!(error = %e, "tun write failed");
    }
}

async fn send(udp: &UdpSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(e) = udp.send_to(datagram, to).await {
        tracing::debug!(to = %to, error = %e, "udp send failed");
    }
}
