//! The data plane event loop: one UDP socket, one TUN device, one boringtun
//! `Tunn` per peer. Receive order: decrypt -> cryptokey routing -> stateful
//! filter -> TUN. Send order: route by allowed IPs -> filter (conntrack) ->
//! encrypt -> UDP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use boringtun::noise::rate_limiter::RateLimiter;
use tokio::sync::{mpsc, watch};
use x25519_dalek::{PublicKey, StaticSecret};
use ztmesh_filter::{DropReason, Filter, FilterConfig, FilterLimits, Verdict};

use crate::batch::{TunReadBatch, TunWriteBatch, UdpSendBatch};
use crate::discovery::Discovery;
use crate::flowlog::{CounterSnapshot, FlowBatch};

use crate::netmap::{NetMap, PeerDiff, SelfNode};
use crate::peers::PeerTable;
use crate::status::StatusRequest;
use crate::tunio::TunIo;
use crate::udpio::Wire;
use crate::wgsock::WgSocket;

mod events;
mod paths;
mod receive;
mod report;
use events::{Controls, Event, next_event};
use paths::{Paths, via};
use receive::Source;
use report::log_monitored;

/// Scratch room for handshake messages and packets queued during a handshake.
const BUF_SIZE: usize = 65_536 + 256;
/// UDP reads (each up to a `recvmmsg` of GRO super-datagrams) per wake-up,
/// so that a flood on the socket cannot starve the TUN side.
const UDP_READS_PER_WAKE: usize = 4;
/// TUN reads per wake-up (each a packet, or a super-packet's segments),
/// for the same reason the other way round.
const TUN_READS_PER_WAKE: usize = 64;
/// Relayed packets handled per wake-up.
const RELAY_READS_PER_WAKE: usize = 64;
/// How often boringtun's timers run while a handshake we sent waits for a
/// direct answer: the relay carries it [`paths::RELAY_AFTER`] after.
const TIMER_TICK_BUSY: Duration = Duration::from_millis(250);
/// How often they run otherwise. boringtun rounds its timers to the
/// second (the shortest is the 5 s handshake retry), so an idle laptop
/// wakes once a second for them, not four times.
const TIMER_TICK_IDLE: Duration = Duration::from_secs(1);
/// How often the loop's chores run (the rate limiters' counts, the
/// filter's expiry, the flow log's batch, STUN), on the tick that comes
/// first after; the slack keeps a tick a few ms early from skipping them.
const CHORES_EVERY: Duration = Duration::from_millis(950);
/// WireGuard message type of a handshake initiation.
const HANDSHAKE_INIT: u8 = 1;
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
    pub udp: WgSocket,
}

impl<T: TunIo> Io<T> {
    /// What the driver waits on: the TUN device (when it is a kernel
    /// one) and the WireGuard socket.
    pub fn sources(&self) -> Vec<crate::driver::Readable> {
        self.tun
            .source()
            .into_iter()
            .chain([self.udp.source()])
            .collect()
    }
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
    /// The machine's interface candidates; a change means a new network.
    pub local_addrs: watch::Receiver<Vec<SocketAddr>>,
    /// Packets that came through the relay.
    pub relay_in: mpsc::Receiver<ztmesh_relay::Frame>,
    /// Packets for the relay.
    pub relay_out: mpsc::Sender<ztmesh_relay::Frame>,
    /// The state of the relay link.
    pub relay_up: watch::Receiver<ztmesh_relay::client::Link>,
    /// Bumped when the server took new endpoints of ours.
    pub reported: watch::Receiver<u64>,
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
    /// The counters last handed to the flow log: an idle second with
    /// nothing new wakes nobody.
    handed_over: Option<CounterSnapshot>,
    /// Public endpoint discovery (STUN) from the WireGuard socket.
    discovery: Discovery,
    /// Where the public endpoint goes to be reported.
    public_endpoint: watch::Sender<Option<SocketAddr>>,
    /// The relay side of sending.
    paths: Paths,
}

struct OldKeys {
    private: StaticSecret,
    public: PublicKey,
    rate_limiter: Arc<RateLimiter>,
    since: Instant,
}

/// Runs the data plane until `shutdown` fires or an I/O endpoint fails.
pub async fn run<T: TunIo>(
    io: Io<T>,
    private: StaticSecret,
    links: Links,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Links {
        mut netmap,
        status_requests,
        rekeys,
        flow_reports,
        connected,
        public_endpoint,
        local_addrs,
        relay_in,
        relay_out,
        relay_up,
        reported,
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
        handed_over: None,
        discovery: Discovery::default(),
        public_endpoint,
        paths: Paths::new(relay_out, relay_up),
    };
    let initial = netmap.borrow_and_update().clone();
    engine.apply_netmap(&io, &initial).await;
    let mut wire = Wire::new(&io.udp)?;
    let mut batches = Batches::default();
    let mut chores_due = Instant::now();
    let mut controls = Controls::new(
        &netmap,
        local_addrs,
        reported,
        shutdown,
        status_requests,
        rekeys,
        relay_in,
    );
    loop {
        let event = std::future::poll_fn(|cx| next_event(cx, &io, &mut controls)).await;
        // What may start or end a handshake's wait for an answer, and so
        // change how often the timer should tick.
        let retick = matches!(
            event,
            Event::Tick | Event::NetMap | Event::Rekey(_) | Event::NetworkChanged | Event::Reported
        );
        match event {
            Event::Io { tun, udp } => {
                // The UDP side first: what it decrypts reaches the TUN
                // (and a reply generated there) before our own sends.
                if udp {
                    engine.on_udp_ready(&io, &mut wire, &mut batches).await?;
                }
                if tun {
                    engine.on_tun_ready(&io, &wire, &mut batches).await?;
                }
            }
            Event::Relay(frame) => {
                engine
                    .on_relay(&io, frame, &mut controls.relay_in, &mut batches)
                    .await?;
            }
            Event::Tick => {
                engine.on_tick(&io).await;
                let now = Instant::now();
                if now >= chores_due {
                    chores_due = now + CHORES_EVERY;
                    engine.rate_limiter.reset_count();
                    if let Some(old) = &engine.old_keys {
                        old.rate_limiter.reset_count();
                    }
                    engine.filter.expire(now);
                    engine.hand_over_flows(&flow_reports);
                    engine.ask_stun(&io).await;
                }
            }
            Event::NetMap => {
                let map = netmap.borrow_and_update().clone();
                engine.apply_netmap(&io, &map).await;
            }
            Event::Rekey(key) => engine.rekey(&io, key).await,
            Event::NetworkChanged => engine.on_network_change(&io).await,
            Event::Reported => engine.probe_all(&io).await,
            Event::Status(reply) => {
                let _ = reply.send(engine.status(&io, connected.load(Ordering::Relaxed)));
            }
            Event::Stop => return Ok(()),
        }
        if retick {
            controls.set_tick_period(engine.tick_period());
        }
    }
}

impl Engine {
    /// Encrypts the TUN read that woke us and what else waits on the
    /// device (a few dozen reads at most; with offloads each can be all
    /// segments of a super-packet) into the send batch, and sends it with
    /// as few system calls as GSO allows. Only a dead TUN is an error.
    async fn on_tun_ready<T: TunIo>(
        &mut self,
        io: &Io<T>,
        wire: &Wire,
        batches: &mut Batches,
    ) -> std::io::Result<()> {
        let now = Instant::now();
        let Batches {
            tun_in, udp_out, ..
        } = batches;
        for read in 0..TUN_READS_PER_WAKE {
            if !io.tun.try_recv_batch(tun_in)? {
                break;
            }
            for packet in tun_in.packets() {
                if udp_out.needs_flush(packet.len()) {
                    wire.flush(&io.udp, udp_out).await;
                }
                self.on_tun(packet, now, udp_out);
            }
            // A lone packet that woke us (a ping, a request) leaves before
            // the read that finds nothing more; a flood still leaves in GSO
            // batches of the reads after it.
            if read == 0 && tun_in.count == 1 {
                wire.flush(&io.udp, udp_out).await;
            }
        }
        wire.flush(&io.udp, udp_out).await;
        Ok(())
    }

    /// Route by allowed IPs, outbound filter, encrypt into the send batch.
    fn on_tun(&mut self, packet: &[u8], now: Instant, udp_out: &mut UdpSendBatch) {
        // The kernel's own IPv6 chatter and traffic to non-peers ends here.
        let Some(dst) = ztmesh_filter::destination_address(packet) else {
            return;
        };
        let Some(key) = self.peers.route(dst) else {
            return;
        };
        if let Verdict::Drop(_) = self.filter.outbound(packet, now) {
            return;
        }
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let way = via(peer);
        match peer.sending_tunn().encapsulate(packet, udp_out.room()) {
            TunnResult::WriteToNetwork(datagram) => match way {
                Some(paths::Via::Direct(endpoint)) => {
                    let len = datagram.len();
                    udp_out.commit(len, endpoint);
                }
                Some(paths::Via::Relay(key)) if self.paths.relay(key, datagram) => {
                    peer.route.relay_data += 1;
                }
                _ => {}
            },
            TunnResult::Err(e) => {
                tracing::debug!(peer = %peer.info.name, error = ?e, "encapsulate failed")
            }
            _ => {}
        }
    }

    /// Reads what waits on the UDP socket (a few `recvmmsg` calls at most),
    /// decrypts and filters it into the TUN batch, and writes that batch.
    /// Only a dead TUN device is an error.
    async fn on_udp_ready<T: TunIo>(
        &mut self,
        io: &Io<T>,
        wire: &mut Wire,
        batches: &mut Batches,
    ) -> std::io::Result<()> {
        let tun_out = &mut batches.tun_out;
        for _ in 0..UDP_READS_PER_WAKE {
            match wire.try_recv(&io.udp) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    // ICMP port unreachable from a peer surfaces here on Linux; not fatal.
                    tracing::debug!(error = %e, "udp receive error");
                    break;
                }
            }
            let now = Instant::now();
            for (from, datagram) in wire.datagrams() {
                if tun_out.is_full() {
                    io.tun.send_batch(tun_out).await?;
                }
                self.on_packet(io, Source::Direct(from), datagram, now, tun_out)
                    .await;
            }
            // Deliver before the next read: a read finds up to eight GRO
            // super-datagrams, enough to coalesce, and a lone packet (a
            // ping, a request) is not held back by the read that finds
            // nothing more.
            if !tun_out.is_empty() {
                io.tun.send_batch(tun_out).await?;
                io.tun.wrote();
            }
        }
        Ok(())
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
            if let TunnResult::WriteToNetwork(datagram) = peer.tunn.update_timers(&mut self.out) {
                if datagram.first() == Some(&HANDSHAKE_INIT) {
                    // A retry: the path may be gone, so try every path.
                    self.paths.spray(&io.udp, datagram, peer).await;
                } else if let Some(way) = via(peer) {
                    self.paths.send(&io.udp, way, datagram).await;
                }
            }
        }
        self.tend_paths(&io.udp, now).await;
    }

    /// Packets from the relay: the one that woke us and what else waits
    /// (a few dozen at most), through the same receive path as UDP.
    async fn on_relay<T: TunIo>(
        &mut self,
        io: &Io<T>,
        first: ztmesh_relay::Frame,
        relay_in: &mut mpsc::Receiver<ztmesh_relay::Frame>,
        batches: &mut Batches,
    ) -> std::io::Result<()> {
        let now = Instant::now();
        let tun_out = &mut batches.tun_out;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(frame) = next.take() {
            if tun_out.is_full() {
                io.tun.send_batch(tun_out).await?;
            }
            self.on_packet(io, Source::Relay(frame.key), &frame.payload, now, tun_out)
                .await;
            taken += 1;
            if taken < RELAY_READS_PER_WAKE {
                next = relay_in.try_recv().ok();
            }
        }
        if !tun_out.is_empty() {
            io.tun.send_batch(tun_out).await?;
            io.tun.wrote();
        }
        Ok(())
    }

    /// The machine is on a new network: ask STUN again at once and start
    /// handshakes with every peer on every path, so that the tunnels move
    /// to the new address without waiting for a timer (and the peers'
    /// NATs see us from there).
    async fn on_network_change<T: TunIo>(&mut self, io: &Io<T>) {
        self.discovery.renew();
        self.ask_stun(io).await;
        self.probe_all(io).await;
        tracing::info!("network changed: handshakes sent to every peer on every path");
    }

    /// A handshake with every peer on every path: after a network change,
    /// and when the server took our new endpoints (it hands them to the
    /// peers, which probe us at the same moment).
    async fn probe_all<T: TunIo>(&mut self, io: &Io<T>) {
        for peer in self.peers.iter_mut() {
            if let TunnResult::WriteToNetwork(init) =
                peer.tunn.format_handshake_initiation(&mut self.out, true)
            {
                self.paths.spray(&io.udp, init, peer).await;
            }
        }
    }

    async fn apply_netmap<T: TunIo>(&mut self, io: &Io<T>, map: &NetMap) {
        self.self_node = map.self_node.clone();
        self.discovery.set_server(map.stun);
        self.ask_stun(io).await;
        let diff = PeerDiff::between(self.peers.iter().map(|p| &p.info), map.peers.values());
        let probe = self.peers.apply(diff);
        if map.filter != self.filter_config {
            self.filter.apply(map.filter.clone(), Instant::now());
            self.filter_config = map.filter.clone();
            tracing::info!(
                version = map.filter.version,
                rules = map.filter.rules.len(),
                "filter applied"
            );
        }
        // Handshakes with new peers (tunnels up before traffic) and with
        // peers on new endpoints (a direct path through their NAT).
        self.start_handshakes(io, &probe).await;
    }

    /// Handshakes with `keys`, sent on every path each peer may have: to
    /// where it was last heard from and to all its endpoints. Both sides
    /// do this when the server tells them of each other (a new peer, new
    /// endpoints), which opens the way through NATs that map a socket to
    /// the same public port whatever the destination; the first answer
    /// sets the path.
    async fn start_handshakes<T: TunIo>(&mut self, io: &Io<T>, keys: &[[u8; 32]]) {
        for key in keys {
            // Forced: a handshake still in flight went to the old
            // endpoints, which may be the very reason for this one.
            if let Some(peer) = self.peers.get_mut(key)
                && let TunnResult::WriteToNetwork(init) =
                    peer.tunn.format_handshake_initiation(&mut self.out, true)
            {
                self.paths.spray(&io.udp, init, peer).await;
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

    /// How often boringtun's timers should run now: often while a
    /// handshake we sent waits for a direct answer (the relay takes over
    /// when none comes), else once a second.
    fn tick_period(&self) -> Duration {
        if self.peers.iter().any(|peer| peer.path.awaits_answer()) {
            TIMER_TICK_BUSY
        } else {
            TIMER_TICK_IDLE
        }
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
        let counters = self.counter_snapshot();
        if events.is_empty() && self.handed_over.as_ref() == Some(&counters) {
            // The flow log still holds these and reports them on its own
            // schedule; handing them over again would only wake it.
            return;
        }
        let batch = FlowBatch {
            counters: counters.clone(),
            events,
        };
        match reports.try_send(batch) {
            Ok(()) => self.handed_over = Some(counters),
            Err(
                mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch),
            ) => self.flow_events_dropped += batch.events.len() as u64,
        }
    }
}

/// Cryptokey routing, then the filter: whether the packet may go to the TUN.
fn admit(filter: &mut Filter, source_allowed: bool, packet: &[u8], now: Instant) -> bool {
    if packet.is_empty() {
        return false;
    }
    if !source_allowed {
        filter.record_drop(DropReason::CryptokeyRouting, packet.len());
        return false;
    }
    filter.inbound(packet, now) == Verdict::Accept
}

/// The packet batches of the loop, allocated once.
#[derive(Default)]
struct Batches {
    tun_in: TunReadBatch,
    tun_out: TunWriteBatch,
    udp_out: UdpSendBatch,
}

async fn send(udp: &WgSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(e) = udp.send_to(datagram, to).await {
        tracing::debug!(to = %to, error = %e, "udp send failed");
    }
}
