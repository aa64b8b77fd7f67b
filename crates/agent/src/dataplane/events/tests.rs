//! What a turn of the loop sees while packets keep coming through the
//! relay: the TUN device and the control channels still get their turn.

use super::*;
use crate::tunio::{ChannelTun, ChannelTunHandle};

struct Loop {
    io: Io<ChannelTun>,
    controls: Controls,
    connected: ConnectedSockets,
    tun: ChannelTunHandle,
    relay: mpsc::Sender<ztmesh_relay::Frame>,
    shutdown: watch::Sender<bool>,
    /// The other senders, kept so that their channels stay open.
    _senders: Vec<Box<dyn std::any::Any>>,
}

impl Loop {
    fn new() -> Self {
        let (tun_side, tun) = ChannelTun::pair();
        let io = Io {
            tun: tun_side,
            udp: crate::bind_udp(([127, 0, 0, 1], 0).into()).unwrap(),
            peer_sockets: false,
        };
        let connected = ConnectedSockets::new(&io.udp, false);
        let (netmap, netmap_rx) = watch::channel(NetMap::default());
        let (addrs, addrs_rx) = watch::channel(Vec::new());
        let (reported, reported_rx) = watch::channel(0);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (status, status_rx) = mpsc::channel(1);
        let (rekeys, rekeys_rx) = mpsc::channel(1);
        let (relay, relay_rx) = mpsc::channel(64);
        let controls = Controls::new(
            &netmap_rx,
            addrs_rx,
            reported_rx,
            shutdown_rx,
            status_rx,
            rekeys_rx,
            relay_rx,
        );
        Self {
            io,
            controls,
            connected,
            tun,
            relay,
            shutdown,
            _senders: vec![
                Box::new(netmap),
                Box::new(addrs),
                Box::new(reported),
                Box::new(status),
                Box::new(rekeys),
            ],
        }
    }

    /// One look, as the loop's turn takes it.
    fn next(&mut self) -> Poll<Event> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        next_event(&mut cx, &self.io, &mut self.controls, &mut self.connected)
    }

    /// Fills the relay's channel.
    fn flood(&self) {
        while self
            .relay
            .try_send(ztmesh_relay::Frame {
                key: [7; 32],
                payload: vec![0; 148],
            })
            .is_ok()
        {}
    }
}

#[tokio::test]
async fn a_relay_flood_leaves_the_tun_device_its_turn() {
    let mut l = Loop::new();
    // The first turns take the timer's first tick and the like.
    while let Poll::Ready(Event::Control(_)) = l.next() {}
    l.flood();
    l.tun.to_dataplane.send(vec![0x45; 28]).await.unwrap();
    for turn in 0..10 {
        match l.next() {
            Poll::Ready(Event::Io { tun, relay, .. }) => {
                assert!(tun, "turn {turn}: the TUN packet waited behind the relay's");
                assert!(relay.is_some(), "turn {turn}: no relay packet with it");
            }
            Poll::Ready(Event::Control(_)) => {}
            Poll::Ready(Event::Stop) => panic!("turn {turn}: stopped"),
            Poll::Pending => panic!("turn {turn}: nothing ready"),
        }
        l.flood();
    }
}

#[tokio::test]
async fn a_relay_flood_does_not_hold_back_a_stop() {
    let mut l = Loop::new();
    while let Poll::Ready(Event::Control(_)) = l.next() {}
    l.flood();
    l.shutdown.send_replace(true);
    // The task that turns the watch into the loop's channel runs.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for turn in 0..3 {
        match l.next() {
            Poll::Ready(Event::Stop) => return,
            Poll::Ready(Event::Io { .. } | Event::Control(_)) => l.flood(),
            Poll::Pending => panic!("turn {turn}: nothing ready"),
        }
    }
    panic!("three turns into a relay flood and the stop request was not seen");
}
