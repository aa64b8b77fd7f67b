//! What the data plane's loop waits on, polled by hand: the two sockets,
//! the control channels and the timer, each keeping its waker between
//! turns.

use std::net::SocketAddr;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, watch};
use x25519_dalek::StaticSecret;

use super::{Io, TIMER_TICK_BUSY};
use crate::connected::ConnectedSockets;
use crate::driver;
use crate::netmap::NetMap;
use crate::status::StatusRequest;
use crate::tunio::TunIo;

/// What one turn of the loop found ready. The sockets and a packet
/// through the relay come together so that a busy one cannot starve the
/// others (a flood through the relay would otherwise keep the loop from
/// its TUN device); the rare control events come one at a time, before
/// them.
pub(super) enum Event {
    Io {
        tun: bool,
        udp: bool,
        /// A packet through the relay (the loop takes more of them itself).
        relay: Option<ztmesh_relay::Frame>,
    },
    /// One of the rare events besides packets.
    Control(Control),
    Stop,
}

/// The loop's events other than packets.
pub(super) enum Control {
    Tick,
    NetMap,
    Rekey(StaticSecret),
    Status(StatusRequest),
    /// The machine's addresses changed (a new network).
    NetworkChanged,
    /// The server took new endpoints of ours.
    Reported,
}

impl Control {
    /// Whether it may start or end a handshake's wait for an answer, and
    /// so change how often the timer should tick.
    pub(super) fn reticks(&self) -> bool {
        !matches!(self, Self::Status(_))
    }
}

/// One poll of what the loop waits on. Each source keeps its waker
/// between turns (no future is made and dropped per packet, which costs
/// a lock and a list insertion on every wake-up).
///
/// The sockets are looked at every turn (their readiness is a flag the
/// driver sets). The channels and the timer are looked at only when one
/// of their wakers fired since the last look ([`driver::take_wakeups`]):
/// the others still hold the waker they registered then, so nothing is
/// missed, and a packet does not pay for eight more polls. A look that
/// stops at the first ready source asks for another next turn.
pub(super) fn next_event<T: TunIo>(
    cx: &mut Context<'_>,
    io: &Io<T>,
    controls: &mut Controls,
    connected: &mut ConnectedSockets,
) -> Poll<Event> {
    // An error on either socket is reported by the read that follows.
    let tun = io.tun.poll_readable(cx).is_ready();
    let udp = io.udp.poll_readable(cx).is_ready() | connected.poll_ready();
    let mut relay = None;
    if driver::take_wakeups() {
        if let Poll::Ready(event) = controls.poll(cx) {
            driver::look_again();
            return Poll::Ready(event);
        }
        if let Poll::Ready(Some(frame)) = controls.relay_in.poll_recv(cx) {
            // More may be waiting: look again next turn, beside the sockets.
            driver::look_again();
            relay = Some(frame);
        }
    }
    if tun || udp || relay.is_some() {
        return Poll::Ready(Event::Io { tun, udp, relay });
    }
    Poll::Pending
}

/// The channels and the timer the loop waits on besides the sockets. The
/// watch channels it follows are turned into channels it can poll: a
/// small task waits on each and signals a change (coalesced: the loop
/// reads the newest value). The tasks end with the loop.
pub(super) struct Controls {
    netmap: mpsc::Receiver<()>,
    shutdown: mpsc::Receiver<()>,
    network: mpsc::Receiver<()>,
    reported: mpsc::Receiver<()>,
    tasks: [tokio::task::JoinHandle<()>; 4],
    status_requests: mpsc::Receiver<StatusRequest>,
    rekeys: mpsc::Receiver<StaticSecret>,
    /// Packets through the relay (the loop drains them itself).
    pub(super) relay_in: mpsc::Receiver<ztmesh_relay::Frame>,
    /// boringtun's timers; a deadline of the driver's own epoll wait.
    tick: driver::Ticker,
}

impl Controls {
    pub(super) fn new(
        netmap: &watch::Receiver<NetMap>,
        local_addrs: watch::Receiver<Vec<SocketAddr>>,
        reported: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
        status_requests: mpsc::Receiver<StatusRequest>,
        rekeys: mpsc::Receiver<StaticSecret>,
        relay_in: mpsc::Receiver<ztmesh_relay::Frame>,
    ) -> Self {
        // Busy until the first tick says otherwise: the loop starts with
        // handshakes to every peer.
        let tick = driver::Ticker::new(TIMER_TICK_BUSY);
        let (netmap_tx, netmap_rx) = mpsc::channel(1);
        let follow = tokio::spawn(changes(netmap.clone(), netmap_tx));
        let (network_tx, network_rx) = mpsc::channel(1);
        let network = tokio::spawn(changes(local_addrs, network_tx));
        let (reported_tx, reported_rx) = mpsc::channel(1);
        let reports = tokio::spawn(changes(reported, reported_tx));
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let stop = tokio::spawn(async move {
            // A change or a dropped sender: either way, stop.
            let _ = shutdown.changed().await;
            let _ = stop_tx.try_send(());
        });
        Self {
            netmap: netmap_rx,
            shutdown: stop_rx,
            network: network_rx,
            reported: reported_rx,
            tasks: [follow, stop, network, reports],
            status_requests,
            rekeys,
            relay_in,
            tick,
        }
    }

    /// How often the timer ticks from now on.
    pub(super) fn set_tick_period(&mut self, period: std::time::Duration) {
        self.tick.set_period(period);
    }

    /// Polls the control channels and the timer, returning the first
    /// event found (not the relay's packets: they come with the sockets').
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        // A closed channel stops the loop like a stop request: its sender
        // (the daemon) is gone.
        if self.shutdown.poll_recv(cx).is_ready() {
            return Poll::Ready(Event::Stop);
        }
        if let Poll::Ready(change) = self.netmap.poll_recv(cx) {
            return Poll::Ready(change.map_or(Event::Stop, |()| Event::Control(Control::NetMap)));
        }
        if let Poll::Ready(Some(reply)) = self.status_requests.poll_recv(cx) {
            return Poll::Ready(Event::Control(Control::Status(reply)));
        }
        if let Poll::Ready(Some(key)) = self.rekeys.poll_recv(cx) {
            return Poll::Ready(Event::Control(Control::Rekey(key)));
        }
        if let Poll::Ready(Some(())) = self.network.poll_recv(cx) {
            return Poll::Ready(Event::Control(Control::NetworkChanged));
        }
        if let Poll::Ready(Some(())) = self.reported.poll_recv(cx) {
            return Poll::Ready(Event::Control(Control::Reported));
        }
        if self.tick.poll_tick(cx).is_ready() {
            return Poll::Ready(Event::Control(Control::Tick));
        }
        Poll::Pending
    }
}

/// Signals each change of `rx` into `tx`, coalesced (a signal already
/// waiting covers the next change); ends, closing `tx`, when the watch
/// sender is gone or nobody listens any more.
async fn changes<T: Send + Sync + 'static>(mut rx: watch::Receiver<T>, tx: mpsc::Sender<()>) {
    while rx.changed().await.is_ok() {
        if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
            return;
        }
    }
}

impl Drop for Controls {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests;
