//! The daemon's side of the relay while its data plane floods it: what
//! comes back from the relay is still read at once. The daemon runs this
//! task on its one control thread; so does the test (Tokio's
//! single-threaded runtime), with the relay beside it (`lab.rs`).

use std::collections::BTreeSet;

use super::*;
use crate::lab::{Lab, probe};

#[tokio::test]
async fn a_device_sending_a_flood_still_hears_the_relay() {
    const PROBES: u8 = 10;
    let mut lab = Lab::start().await;
    let (a_key, c_key) = (lab.a.key, lab.c.key);
    let (_target, target) = watch::channel(Some(lab.target.clone()));
    let (to_daemon, mut inbound) = mpsc::channel(1024);
    let (outbound, from_daemon) = mpsc::channel(1024);
    let (up, mut link) = watch::channel(Link::Down);
    tokio::spawn(run(
        target,
        Arc::clone(&lab.c.credentials),
        to_daemon,
        from_daemon,
        up,
    ));
    let on_udp = tokio::time::timeout(
        Duration::from_secs(8),
        link.wait_for(|l| matches!(l, Link::Udp { .. })),
    )
    .await;
    assert!(on_udp.is_ok_and(|r| r.is_ok()), "c never moved to UDP");

    // c's data plane keeps the channel to the relay full for 3 s (never
    // blocking: the test joins it from the runtime's thread).
    let flood = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let frame = Frame {
                key: a_key,
                payload: vec![0x55; 1200],
            };
            match outbound.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => std::thread::yield_now(),
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    for i in 0..PROBES {
        lab.a.send(&c_key, &probe(i));
    }
    let mut got = BTreeSet::new();
    while got.len() < usize::from(PROBES) {
        match tokio::time::timeout(Duration::from_secs(5), inbound.recv()).await {
            Ok(Some(frame)) => {
                if let (true, [b'p', b'r', b'o', b'b', b'e', i]) =
                    (frame.key == a_key, frame.payload.as_slice())
                {
                    got.insert(*i);
                }
            }
            _ => break,
        }
    }
    let waited = sent.elapsed();
    flood.join().unwrap();
    assert_eq!(got.len(), usize::from(PROBES), "probes lost");
    assert!(
        waited < Duration::from_secs(1),
        "a's packets took {waited:?} to reach c while c flooded the relay"
    );
}

/// The client's UDP side sends a WireGuard message whose datagram fits a
/// 1,500-byte link unfragmented, and refuses one byte more (the caller
/// then sends it over TLS).
#[tokio::test]
async fn a_message_too_long_for_one_datagram_is_left_for_tls() {
    let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = relay.local_addr().unwrap();
    let mut side = UdpSide::open(addr, Session::new(1, &[7; 32]))
        .await
        .unwrap();
    assert_eq!(side.link(), Link::Udp { max_message: 1_404 });
    // Tokio's `try_send` needs the reactor to have seen the socket writable.
    side.socket.writable().await.unwrap();
    let mut out = Vec::new();
    assert!(side.send(&[2; 32], &[0; 1_404], &mut out));
    assert!(!side.send(&[2; 32], &[0; 1_405], &mut out));
    let mut buf = [0u8; 4_096];
    let len = relay.recv(&mut buf).await.unwrap();
    assert_eq!(len, 1_472);
    let up = udp::parse_up(&buf[..len]).unwrap();
    assert_eq!(up.session, 1);
    let nothing = tokio::time::timeout(Duration::from_millis(200), relay.recv(&mut buf)).await;
    assert!(nothing.is_err(), "the long message went over UDP too");
}
