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
use crate::connected::ConnectedSockets;
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
mod pump;
mod receive;
mod report;
use events::{Control, Controls, Event, next_event};
use paths::{Paths, via};
use report::log_monitored;

/// Scratch room for handshake messages and packets queued during a handshake.
const BUF_SIZE: usize = 65_536 + 256;
/// UDP reads per wake-up (one message, then `recvmmsg` calls of up to
/// eight GRO super-datagrams each), so that a flood on the socket cannot
/// starve the TUN side.
const UDP_READS_PER_WAKE: usize = 5;
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
/// WireGuard message type of a handshake response.
const HANDSHAKE_RESPONSE: u8 = 2;
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
    /// Whether peers with a proven endpoint get a connected socket of
    /// their own beside it ([`ConnectedSockets`]).
    pub peer_sockets: bool,
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
    /// The rule counters as last taken.
    rule_hits: report::TakenRuleHits,
    /// Public endpoint discovery (STUN) from the WireGuard socket.
    discovery: Discovery,
    /// Where the public endpoint goes to be reported.
    public_endpoint: watch::Sender<Option<SocketAddr>>,
    /// The relay side of sending.
    paths: Paths,
    /// A connected socket per peer endpoint that carries traffic.
    connected: ConnectedSockets,
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
        rule_hits: report::TakenRuleHits::default(),
        discovery: Discovery::default(),
        public_endpoint,
        paths: Paths::new(relay_out, relay_up),
        connected: ConnectedSockets::new(&io.udp, io.peer_sockets),
    };
    let initial = netmap.borrow_and_update().clone();
    engine.apply_netmap(&io, &initial);
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
    // The last turn read the TUN device and may have left packets there
    // (`on_tun_ready`'s streak).
    let mut tun_left = false;
    loop {
        let event =
            std::future::poll_fn(|cx| next_event(cx, &io, &mut controls, &mut engine.connected))
                .await;
        match event {
            Event::Io { tun, udp, relay } => {
                let streak = std::mem::take(&mut tun_left) && tun;
                if let Some(frame) = relay {
                    engine.on_relay(&io, frame, &mut controls.relay_in, &mut batches)?;
                }
                // The UDP side first: what it decrypts reaches the TUN
                // (and a reply generated there) before our own sends.
                // What it wrote to the device may have been answered at
                // once (an echo, an ACK): that goes out in this turn.
                let answered = udp && engine.on_udp_ready(&io, &mut wire, &mut batches)?;
                if tun || answered {
                    tun_left = engine.on_tun_ready(&io, &wire, &mut batches, streak)?;
                }
                // The one wait of the packet path: a full socket buffer
                // left datagrams in the batch, and maybe packets of a TUN
                // read not yet encrypted.
                loop {
                    if wire.try_flush(&io.udp, &engine.connected, &mut batches.udp_out) {
                        if !batches.tun_in.has_pending() {
                            break;
                        }
                        tun_left = engine.on_tun_ready(&io, &wire, &mut batches, true)?;
                    } else {
                        // The TUN device, readable, would end every wait
                        // for room at once.
                        let _muted = crate::driver::mute();
                        if let Err(e) = io.udp.room().await {
                            tracing::debug!(error = %e, "cannot wait for room to send; dropping the batch");
                            batches.udp_out.clear();
                        }
                    }
                }
            }
            Event::Stop => return Ok(()),
            Event::Control(control) => {
                let retick = control.reticks();
                let mut chores = Chores {
                    due: &mut chores_due,
                    flow_reports: &flow_reports,
                    netmap: &mut netmap,
                    connected: &connected,
                };
                engine.on_control(&io, control, &mut chores);
                if retick {
                    controls.set_tick_period(engine.tick_period());
                }
            }
        }
    }
}

/// What the loop's rare events need besides the engine.
struct Chores<'a> {
    /// When the once-a-second chores run next.
    due: &'a mut Instant,
    flow_reports: &'a mpsc::Sender<FlowBatch>,
    netmap: &'a mut watch::Receiver<NetMap>,
    connected: &'a AtomicBool,
}

impl Engine {
    /// The loop's events other than packets: timers, a new network map,
    /// a key rotation, a network change, a status request. Kept out of
    /// line and marked cold, so that the packet path's code stays
    /// together: a ping that finds the caches cold then loads fewer
    /// lines of code.
    #[cold]
    #[inline(never)]
    fn on_control<T: TunIo>(&mut self, io: &Io<T>, control: Control, chores: &mut Chores<'_>) {
        match control {
            Control::Tick => {
                self.on_tick(io);
                let now = Instant::now();
                if now >= *chores.due {
                    *chores.due = now + CHORES_EVERY;
                    self.rate_limiter.reset_count();
                    if let Some(old) = &self.old_keys {
                        old.rate_limiter.reset_count();
                    }
                    self.filter.expire(now);
                    self.hand_over_flows(chores.flow_reports);
                    self.ask_stun(io);
                }
            }
            Control::NetMap => {
                let map = chores.netmap.borrow_and_update().clone();
                self.apply_netmap(io, &map);
            }
            Control::Rekey(key) => self.rekey(io, key),
            Control::NetworkChanged => self.on_network_change(io),
            Control::Reported => self.probe_all(io),
            Control::Status(reply) => {
                let _ = reply.send(self.status(io, chores.connected.load(Ordering::Relaxed)));
            }
        }
    }

    fn on_tick<T: TunIo>(&mut self, io: &Io<T>) {
        let now = Instant::now();
        self.peers.expire_retiring(now);
        if !self.connected.is_empty() {
            // Endpoints no peer sends to directly any more. foldhash: the
            // tick runs on the packet thread every 250 ms while traffic
            // flows (std's SipHash here was on 30 % of ping round trips in
            // `footprint.sh`'s list).
            let direct: std::collections::HashSet<SocketAddr, foldhash::fast::RandomState> = self
                .peers
                .iter()
                .filter(|p| !p.route.via_relay)
                .filter_map(|p| p.endpoint)
                .collect();
            self.connected.retain(|remote| direct.contains(&remote));
        }
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
                    self.paths.spray(&io.udp, datagram, peer);
                } else if let Some(way) = via(peer) {
                    self.paths.send(&io.udp, way, datagram);
                }
            }
        }
        self.tend_paths(&io.udp, now);
    }

    /// The machine is on a new network: ask STUN again at once and start
    /// handshakes with every peer on every path, so that the tunnels move
    /// to the new address without waiting for a timer (and the peers'
    /// NATs see us from there). The connected sockets close: each keeps
    /// the source address it got when made, maybe one gone now.
    fn on_network_change<T: TunIo>(&mut self, io: &Io<T>) {
        self.connected.clear();
        self.discovery.renew();
        self.ask_stun(io);
        self.probe_all(io);
        tracing::info!("network changed: handshakes sent to every peer on every path");
    }

    /// A handshake with every peer on every path: after a network change,
    /// and when the server took our new endpoints (it hands them to the
    /// peers, which probe us at the same moment).
    fn probe_all<T: TunIo>(&mut self, io: &Io<T>) {
        for peer in self.peers.iter_mut() {
            if let TunnResult::WriteToNetwork(init) =
                peer.tunn.format_handshake_initiation(&mut self.out, true)
            {
                self.paths.spray(&io.udp, init, peer);
            }
        }
    }

    fn apply_netmap<T: TunIo>(&mut self, io: &Io<T>, map: &NetMap) {
        self.self_node = map.self_node.clone();
        self.discovery.set_server(map.stun);
        self.ask_stun(io);
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
        self.start_handshakes(io, &probe);
    }

    /// Handshakes with `keys`, sent on every path each peer may have: to
    /// where it was last heard from and to all its endpoints. Both sides
    /// do this when the server tells them of each other (a new peer, new
    /// endpoints), which opens the way through NATs that map a socket to
    /// the same public port whatever the destination; the first answer
    /// sets the path.
    fn start_handshakes<T: TunIo>(&mut self, io: &Io<T>, keys: &[[u8; 32]]) {
        for key in keys {
            // Forced: a handshake still in flight went to the old
            // endpoints, which may be the very reason for this one.
            if let Some(peer) = self.peers.get_mut(key)
                && let TunnResult::WriteToNetwork(init) =
                    peer.tunn.format_handshake_initiation(&mut self.out, true)
            {
                self.paths.spray(&io.udp, init, peer);
            }
        }
    }

    /// Switches to a new static key (key rotation). Sessions of the old
    /// key carry traffic until the new handshakes complete; the old key
    /// keeps answering handshakes for a while.
    fn rekey<T: TunIo>(&mut self, io: &Io<T>, private: StaticSecret) {
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
        self.start_handshakes(io, &keys);
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
    fn ask_stun<T: TunIo>(&mut self, io: &Io<T>) {
        if let Some((server, request)) = self.discovery.due(Instant::now()) {
            send(&io.udp, &request, server);
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
        std::hint::cold_path();
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

/// Sends one handshake, cookie or STUN message without waiting. A full
/// socket buffer drops it, as a full link would: WireGuard's timers send
/// handshakes again, and STUN asks again.
fn send(udp: &WgSocket, datagram: &[u8], to: SocketAddr) {
    if let Err(e) = udp.try_send_to(datagram, to) {
        tracing::debug!(to = %to, error = %e, "udp send failed");
    }
}
