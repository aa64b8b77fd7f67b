//! The relay's UDP side with one device flooding it: the others' datagrams
//! still get through (each device has a receive queue of its own on the
//! relay's port). Real TLS with certificates from a test CA, real UDP on
//! loopback (`lab.rs`).

use std::collections::BTreeSet;

use super::*;
use crate::lab::{Lab, padded_probe, probe, udp_probes};

/// The relay and both devices share one thread, so while the test sends
/// the relay reads nothing, as a relay starved of CPU during a flood
/// reads nothing: b's datagrams fill a receive queue, then a's arrive,
/// then more of b's. With one queue for all, a's are dropped (1 of 20
/// got through when tried); with one each, a's wait in their own and are
/// forwarded once the relay runs.
#[tokio::test]
async fn a_device_flooding_the_relay_does_not_silence_the_others() {
    const PROBES: u8 = 20;
    let mut lab = Lab::start().await;
    let (a_key, b_key) = (lab.a.key, lab.b.key);
    let flood = [0x55; 1200];
    for _ in 0..2_000 {
        lab.b.send(&a_key, &flood);
    }
    for i in 0..PROBES {
        lab.a.send(&b_key, &probe(i));
    }
    for _ in 0..2_000 {
        lab.b.send(&a_key, &flood);
    }
    // Now the relay runs.
    let mut got = udp_probes(&lab.b.udp, &a_key).await;
    got.extend(lab.tls_probes.lock().unwrap().iter());
    let forwarded = lab.relay.stats().frames.load(Ordering::Relaxed);
    println!(
        "b sent 4000 datagrams, the relay forwarded {forwarded}; {} of a's {PROBES} probes reached b",
        got.len()
    );
    assert!(
        forwarded < 4_000,
        "the flood did not overflow the relay's queue ({forwarded} forwarded)"
    );
    assert_eq!(
        got.len(),
        usize::from(PROBES),
        "a's datagrams were lost in another device's flood"
    );
}

/// A device heard from a new address (NAT rebinding, roaming) is sent to
/// there at once, over the shared socket until it gets a socket of its
/// own again (at most every `REOPEN`), and its old address gets nothing.
#[tokio::test]
async fn a_device_that_moves_is_followed_to_its_new_address() {
    let mut lab = Lab::start().await;
    let (a_key, b_key) = (lab.a.key, lab.b.key);
    let old = std::mem::replace(
        &mut lab.a.udp,
        UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    );
    lab.a.udp.connect(lab.addr).await.unwrap();
    lab.a.udp.writable().await.unwrap();
    for round in 0..2u8 {
        // The newest authentic datagram moves a's address.
        lab.a.send(&b_key, &probe(round));
        assert_eq!(
            udp_probes(&lab.b.udp, &a_key).await,
            BTreeSet::from([round])
        );
        lab.b.send(&a_key, &probe(10 + round));
        assert_eq!(
            udp_probes(&lab.a.udp, &b_key).await,
            BTreeSet::from([10 + round])
        );
        let own = lab.relay.lock().by_key.get(&a_key).map(|c| {
            let path = c.udp.path();
            path.own.as_ref().map(|o| o.peer)
        });
        let new = lab.a.udp.local_addr().unwrap();
        if round == 0 {
            // Moved within `REOPEN` of its first socket: no new one yet.
            assert_eq!(own, Some(Some(old.local_addr().unwrap())));
            tokio::time::sleep(REOPEN).await;
        } else {
            assert_eq!(
                own,
                Some(Some(new)),
                "no socket of its own at the new address"
            );
        }
    }
    let mut buf = [0u8; 2048];
    assert!(
        old.try_recv(&mut buf).is_err(),
        "the old address still got packets"
    );
}

/// A packet that would not fit one unfragmented datagram down to the
/// device (one that came over TLS from a device whose UDP is blocked can
/// be that long) goes over the device's TLS stream instead; one byte
/// shorter, it goes over UDP.
#[tokio::test]
async fn a_packet_too_long_for_one_datagram_down_goes_over_tls() {
    let mut lab = Lab::start().await;
    let (a_key, b_key) = (lab.a.key, lab.b.key);
    // Loopback is IPv4: 1,472 bytes of UDP payload on a 1,500-byte link.
    let fits = udp::max_datagram(lab.addr) - udp::DOWN_HEADER;
    assert_eq!(fits, 1_436);
    lab.a.send(&b_key, &padded_probe(1, fits));
    lab.a.send(&b_key, &padded_probe(2, fits + 1));
    let over_udp = udp_probes(&lab.b.udp, &a_key).await;
    let over_tls = lab.tls_probes.lock().unwrap().clone();
    assert_eq!(over_udp, BTreeSet::from([1]), "over UDP");
    assert_eq!(over_tls, BTreeSet::from([2]), "over TLS");
}
