//! A level-triggered source under the driver: reported on every wait
//! while it holds something, and not while muted.

use std::net::UdpSocket;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::mute;
use crate::driver::tests::datagram_source;
use crate::driver::{ReadyFlag, block_on};

#[test]
fn reported_while_it_holds_something_and_not_while_muted() {
    let (rx, tx, to, flag, mut source) = datagram_source();
    source.level_triggered = true;
    let mut turns = 0;
    let mut muted = None;
    let mut muted_at = None;
    let last = block_on(
        std::future::poll_fn(|cx| {
            turns += 1;
            match turns {
                // Two datagrams come in one edge: a source registered
                // with data already queued is reported once, too.
                1 => {
                    flag.clear();
                    tx.send_to(b"a", to).unwrap();
                    tx.send_to(b"b", to).unwrap();
                    // Should a wait never end (an edge-triggered source),
                    // the next turn fails instead of the test hanging.
                    wake_after(cx.waker(), Duration::from_secs(5));
                    Poll::Pending
                }
                2 => {
                    assert_eq!(read_one(&rx, &flag, turns), b'a');
                    Poll::Pending
                }
                // "b" was left: the wait reports the socket at once.
                3 => {
                    assert_eq!(read_one(&rx, &flag, turns), b'b');
                    // Muted, a datagram that comes does not end the wait;
                    // the waker does, 100 ms on.
                    muted = Some(mute());
                    muted_at = Some(Instant::now());
                    tx.send_to(b"c", to).unwrap();
                    wake_after(cx.waker(), Duration::from_millis(100));
                    Poll::Pending
                }
                4 => {
                    let waited = muted_at.map(|at| at.elapsed()).unwrap_or_default();
                    assert!(!flag.is_set(), "reported while muted");
                    assert!(waited >= Duration::from_millis(90), "{waited:?}");
                    muted = None;
                    Poll::Pending
                }
                // Heard again: "c" waits.
                _ => Poll::Ready(read_one(&rx, &flag, turns)),
            }
        }),
        &[source],
    )
    .unwrap();
    assert_eq!(last, b'c');
    assert_eq!(turns, 5);
    assert!(muted.is_none());
}

/// Reads one datagram and clears the flag without reading the socket
/// empty, as the data plane does after a lone packet.
fn read_one(rx: &UdpSocket, flag: &ReadyFlag, turn: u32) -> u8 {
    assert!(flag.is_set(), "turn {turn}: the source was not reported");
    let mut buf = [0u8; 8];
    assert_eq!(rx.recv(&mut buf).unwrap(), 1);
    flag.clear();
    buf[0]
}

fn wake_after(waker: &Waker, after: Duration) {
    let waker = waker.clone();
    std::thread::spawn(move || {
        std::thread::sleep(after);
        waker.wake();
    });
}
