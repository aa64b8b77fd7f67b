//! Tests of the data plane driver: readiness, wake-ups and ticks.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::*;

/// A non-blocking socket to receive on (its flag set, as a new
/// registration's is), one to send to it from, its address, its flag,
/// and the driver's source for it.
pub(super) fn datagram_source() -> (
    UdpSocket,
    UdpSocket,
    std::net::SocketAddr,
    ReadyFlag,
    Readable,
) {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_nonblocking(true).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    let flag = ReadyFlag::new();
    let source = Readable {
        fd: rx.as_raw_fd(),
        flag: flag.clone(),
        written_locally: false,
        level_triggered: false,
    };
    (rx, tx, to, flag, source)
}

#[test]
fn a_datagram_sets_the_flag_and_wakes_the_future() {
    let (rx, tx, to, flag, source) = datagram_source();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        tx.send_to(b"hello", to).unwrap();
    });
    let mut turns = 0;
    let started = Instant::now();
    let got = block_on(
        std::future::poll_fn(|_| {
            turns += 1;
            if !flag.is_set() {
                return Poll::Pending;
            }
            let mut buf = [0u8; 16];
            match rx.recv(&mut buf) {
                Ok(n) => Poll::Ready(buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    flag.clear();
                    Poll::Pending
                }
                Err(e) => panic!("{e}"),
            }
        }),
        &[source],
    )
    .unwrap();
    sender.join().unwrap();
    assert_eq!(got, b"hello");
    assert!(started.elapsed() >= Duration::from_millis(40));
    // The first turn found nothing and cleared the flag, then slept
    // until the datagram: no busy loop.
    assert!(turns <= 3, "{turns} turns");
}

#[test]
fn a_waker_from_another_thread_wakes_the_future() {
    let (tx, rx) = std::sync::mpsc::channel::<Waker>();
    let woken = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&woken);
    let other = std::thread::spawn(move || {
        let waker = rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        set.store(true, Ordering::SeqCst);
        waker.wake();
    });
    let mut sent = Some(tx);
    block_on(
        std::future::poll_fn(|cx| {
            if let Some(tx) = sent.take() {
                tx.send(cx.waker().clone()).unwrap();
            }
            if woken.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }),
        &[],
    )
    .unwrap();
    other.join().unwrap();
}

#[test]
fn a_ticker_wakes_the_driver_at_its_deadlines_without_a_busy_loop() {
    let period = Duration::from_millis(30);
    let mut ticker = Ticker::new(period);
    let (mut turns, mut ticks, mut told) = (0, Vec::new(), 0);
    let started = Instant::now();
    block_on(
        std::future::poll_fn(|cx| {
            turns += 1;
            // Polled only when told, and after a tick again until it
            // waits, as the data plane polls it.
            if take_wakeups() {
                told += 1;
                while ticker.poll_tick(cx).is_ready() {
                    ticks.push(started.elapsed());
                }
            }
            if ticks.len() == 4 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }),
        &[],
    )
    .unwrap();
    // The first tick at once, then one a period after the other.
    assert!(ticks[0] < period, "{ticks:?}");
    for pair in ticks.windows(2) {
        assert!(pair[1] - pair[0] >= period, "{ticks:?}");
    }
    // A turn a tick, each one told: no busy loop.
    assert!(turns <= 6, "{turns} turns for {ticks:?}");
    assert_eq!(told, turns);
    // The deadline is gone with the driver.
    assert!(DEADLINE.with(Cell::get).is_none());
}

#[test]
fn a_new_period_counts_from_the_last_tick_and_a_shorter_one_cuts_the_wait() {
    let mut ticker = Ticker::new(Duration::from_secs(5));
    let (mut ticks, mut turns) = (Vec::new(), 0);
    let started = Instant::now();
    block_on(
        std::future::poll_fn(|cx| {
            turns += 1;
            if take_wakeups() {
                while ticker.poll_tick(cx).is_ready() {
                    ticks.push(started.elapsed());
                }
                // After the look that left the deadline, as after an
                // event the loop handled: the tick 5 s away comes
                // 40 ms after the first instead, in the wait going
                // on; then 120 ms after the second.
                match ticks.len() {
                    1 => ticker.set_period(Duration::from_millis(40)),
                    2 => ticker.set_period(Duration::from_millis(120)),
                    _ => {}
                }
            }
            if ticks.len() == 3 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }),
        &[],
    )
    .unwrap();
    let gaps = [ticks[1] - ticks[0], ticks[2] - ticks[1]];
    assert!(gaps[0] >= Duration::from_millis(40), "{ticks:?}");
    assert!(
        gaps[0] < Duration::from_secs(2),
        "the 5 s wait went on: {ticks:?}"
    );
    assert!(gaps[1] >= Duration::from_millis(120), "{ticks:?}");
    assert!(turns <= 8, "{turns} turns for {ticks:?}");
}

#[test]
fn the_loops_time_is_the_reading_before_the_wait_until_the_clock_is_read_again() {
    // Off a driver thread it is the clock.
    let before = Instant::now();
    let off = now();
    assert!(before <= off && off <= Instant::now());

    let period = Duration::from_millis(30);
    let mut ticker = Ticker::new(period);
    let mut seen = Vec::new();
    block_on(
        std::future::poll_fn(|cx| {
            // At the start of a turn, and after looking for wake-ups (a
            // wait that timed out makes that read the clock).
            let start = now();
            let clock = Instant::now();
            if take_wakeups() {
                while ticker.poll_tick(cx).is_ready() {}
            }
            seen.push((start, clock, now()));
            if seen.len() == 3 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }),
        &[],
    )
    .unwrap();
    // After each wait (a tick period, ended by its timeout) the turn
    // starts with the reading taken before it, a period old; the timeout
    // then has the clock read, and the loop's time is fresh again.
    for &(start, clock, after) in &seen[1..] {
        assert!(clock.duration_since(start) >= period, "{seen:?}");
        assert!(after >= clock, "{seen:?}");
    }
    // Under a flood (no wait) the clock is read every few dozen turns,
    // not on each, also when a waker fires on every turn (relayed
    // packets).
    let advanced = block_on(
        async {
            // One wait (ended at once by a wake-up). There is no
            // deadline here, so no wait reads the clock: the loop's time
            // is the reading taken when the driver started.
            let mut waited = false;
            std::future::poll_fn(|cx| {
                if std::mem::replace(&mut waited, true) {
                    return Poll::Ready(());
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            })
            .await;
            let first = now();
            std::thread::sleep(Duration::from_millis(2));
            let mut turns = 0;
            while now() == first && turns < 10 * TURNS_PER_CLOCK_READ {
                std::future::poll_fn(|_| {
                    look_again();
                    take_wakeups();
                    Poll::Ready(())
                })
                .await;
                turns += 1;
            }
            turns
        },
        &[],
    )
    .unwrap();
    assert!(
        (TURNS_PER_CLOCK_READ..=TURNS_PER_CLOCK_READ + 1).contains(&advanced),
        "{advanced} turns"
    );
    // Gone with the driver: the clock again.
    assert!(CLOCK.with(Cell::get).is_none());
}

#[test]
fn turns_woken_by_packets_keep_the_loops_time_until_the_next_tick() {
    let (rx, tx, to, flag, source) = datagram_source();
    let sender = std::thread::spawn(move || {
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(20));
            tx.send_to(b"ping", to).unwrap();
        }
    });
    let period = Duration::from_millis(200);
    let mut ticker = Ticker::new(period);
    let mut ticks = 0;
    // (loop's time, clock) at each datagram, and at the first tick after
    // them.
    let mut at_datagrams = Vec::new();
    let mut at_tick = None;
    block_on(
        std::future::poll_fn(|cx| {
            if take_wakeups() {
                while ticker.poll_tick(cx).is_ready() {
                    ticks += 1;
                    if at_datagrams.len() == 3 {
                        at_tick = Some((now(), Instant::now()));
                        return Poll::Ready(());
                    }
                }
            }
            let mut buf = [0u8; 16];
            while flag.is_set() {
                match rx.recv(&mut buf) {
                    Ok(_) => at_datagrams.push((now(), Instant::now())),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => flag.clear(),
                    Err(e) => panic!("{e}"),
                }
            }
            Poll::Pending
        }),
        &[source],
    )
    .unwrap();
    sender.join().unwrap();
    assert_eq!(at_datagrams.len(), 3, "{at_datagrams:?}");
    // The datagrams came 20, 40 and 60 ms after the first tick, whose
    // deadline was set from one clock reading: every turn they woke
    // worked with that reading, none read the clock again.
    let (first, _) = at_datagrams[0];
    for &(loop_time, clock) in &at_datagrams {
        assert_eq!(loop_time, first, "{at_datagrams:?}");
        assert!(clock.duration_since(loop_time) < period, "{at_datagrams:?}");
    }
    let (_, last_clock) = at_datagrams[2];
    assert!(last_clock.duration_since(first) >= Duration::from_millis(35));
    // The tick after them brought a fresh reading.
    let (tick_time, tick_clock) = at_tick.unwrap();
    assert_eq!(ticks, 2);
    assert!(tick_time > first && tick_time <= tick_clock);
    assert!(tick_time.duration_since(first) >= period - Duration::from_millis(1));
}

#[test]
fn a_tick_comes_even_when_the_future_never_lets_the_driver_wait() {
    let period = Duration::from_millis(20);
    let mut ticker = Ticker::new(period);
    let started = Instant::now();
    // Every await is ready at once, like a loop that always finds a
    // socket ready: the future never returns to the driver.
    let ticks = block_on(
        async {
            let mut ticks = 0;
            while ticks < 3 && started.elapsed() < Duration::from_secs(5) {
                std::future::poll_fn(|cx| {
                    if take_wakeups() && ticker.poll_tick(cx).is_ready() {
                        ticks += 1;
                        look_again();
                    }
                    Poll::Ready(())
                })
                .await;
            }
            ticks
        },
        &[],
    )
    .unwrap();
    assert_eq!(ticks, 3);
    assert!(started.elapsed() >= period * 2);
}

#[test]
fn a_deadline_that_came_while_the_future_waits_elsewhere_does_not_spin() {
    let period = Duration::from_millis(10);
    let mut ticker = Ticker::new(period);
    let (tx, rx) = std::sync::mpsc::channel::<Waker>();
    let woken = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&woken);
    let other = std::thread::spawn(move || {
        let waker = rx.recv().unwrap();
        // Well past the ticker's deadline.
        std::thread::sleep(Duration::from_millis(100));
        set.store(true, Ordering::SeqCst);
        waker.wake();
    });
    let (mut turns, mut sent) = (0, Some(tx));
    let ticked = block_on(
        std::future::poll_fn(|cx| {
            turns += 1;
            if turns == 1 {
                // The first tick, then a look that leaves a deadline.
                assert!(ticker.poll_tick(cx).is_ready());
                assert!(ticker.poll_tick(cx).is_pending());
            }
            // Then waiting on something else (the other thread): the
            // ticker is not polled until that comes.
            if let Some(tx) = sent.take() {
                tx.send(cx.waker().clone()).unwrap();
            }
            if !woken.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            Poll::Ready(take_wakeups() && ticker.poll_tick(cx).is_ready())
        }),
        &[],
    )
    .unwrap();
    other.join().unwrap();
    // The deadline woke one turn, then the driver slept until the
    // other thread's wake (a deadline left in the past would have
    // made it spin for 100 ms), and the tick was still due.
    assert!(turns <= 4, "{turns} turns");
    assert!(ticked);
}

#[test]
fn wakeups_are_told_once_and_looking_again_repeats_them() {
    // Off a driver thread every turn must poll everything.
    assert!(take_wakeups());
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_nonblocking(true).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    let flag = ReadyFlag::new();
    flag.clear();
    let source = Readable {
        fd: rx.as_raw_fd(),
        flag: flag.clone(),
        written_locally: false,
        level_triggered: false,
    };
    let mut seen = Vec::new();
    let mut buf = [0u8; 16];
    block_on(
        std::future::poll_fn(|cx| {
            seen.push(take_wakeups());
            match seen.len() {
                // The first turn is told to look; a datagram wakes the
                // next one through epoll alone.
                1 => {
                    tx.send_to(b"x", to).unwrap();
                    Poll::Pending
                }
                // No waker fired: not told. Fire one.
                2 => {
                    assert!(flag.is_set());
                    rx.recv(&mut buf).unwrap();
                    flag.clear();
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                // Told, and asked to look again with a datagram.
                3 => {
                    look_again();
                    tx.send_to(b"y", to).unwrap();
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        }),
        &[source],
    )
    .unwrap();
    assert_eq!(seen, [true, false, true, true]);
    // The driver is gone from this thread.
    assert!(take_wakeups());
}

#[test]
fn a_socket_watched_while_the_driver_runs_is_told_once_per_edge_until_dropped() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_nonblocking(true).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    assert!(
        watch(rx.as_raw_fd(), ReadyFlag::new()).is_err(),
        "off a driver thread"
    );
    let mut step = 0;
    let mut watched: Option<Watch> = None;
    let flag = ReadyFlag::new();
    let mut ready = Vec::new();
    let started = Instant::now();
    let mut ticker = Ticker::new(Duration::from_millis(50));
    block_on(
        std::future::poll_fn(|cx| {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "stuck at step {step}"
            );
            take_ready(&mut ready);
            match step {
                0 => {
                    let w = watch(rx.as_raw_fd(), flag.clone()).unwrap();
                    // Nothing read yet: the flag starts set, so the first
                    // edge is not queued again.
                    flag.clear();
                    watched = Some(w);
                    tx.send_to(b"a", to).unwrap();
                    tx.send_to(b"b", to).unwrap();
                    step = 1;
                }
                1 if !ready.is_empty() => {
                    let id = watched.as_ref().unwrap().id();
                    assert_eq!(ready, vec![id], "one entry for two datagrams");
                    ready.clear();
                    let mut buf = [0u8; 4];
                    while rx.recv(&mut buf).is_ok() {}
                    flag.clear();
                    tx.send_to(b"c", to).unwrap();
                    step = 2;
                }
                2 if !ready.is_empty() => {
                    assert_eq!(ready.len(), 1, "a new edge after the empty read");
                    ready.clear();
                    // Dropped: no more reports, and its id is free again.
                    drop(watched.take());
                    flag.clear();
                    tx.send_to(b"d", to).unwrap();
                    // The first tick is at once; the next one, 50 ms
                    // on, wakes the driver for the last step.
                    assert!(ticker.poll_tick(cx).is_ready());
                    assert!(ticker.poll_tick(cx).is_pending());
                    step = 3;
                }
                // A tick later, the datagram sits unreported.
                3 if take_wakeups() && ticker.poll_tick(cx).is_ready() => {
                    assert!(ready.is_empty() && !flag.is_set());
                    let again = watch(rx.as_raw_fd(), ReadyFlag::new()).unwrap();
                    assert_eq!(again.id(), 0, "the freed id is taken again");
                    return Poll::Ready(());
                }
                _ => {}
            }
            Poll::Pending
        }),
        &[],
    )
    .unwrap();
    assert!(!flag.is_set(), "the dropped watch set nothing");
}

#[test]
fn only_a_turn_woken_by_a_locally_written_descriptor_yields_before_it_sends() {
    let local = UdpSocket::bind("127.0.0.1:0").unwrap();
    let remote = UdpSocket::bind("127.0.0.1:0").unwrap();
    for socket in [&local, &remote] {
        socket.set_nonblocking(true).unwrap();
    }
    let local_flag = ReadyFlag::new();
    let remote_flag = ReadyFlag::new();
    let sources = [
        Readable {
            fd: local.as_raw_fd(),
            flag: local_flag.clone(),
            written_locally: true,
            level_triggered: false,
        },
        Readable {
            fd: remote.as_raw_fd(),
            flag: remote_flag.clone(),
            written_locally: false,
            level_triggered: false,
        },
    ];
    // The sender waits for the future to ask for each datagram, so that
    // every one of them ends a wait of its own.
    let (ask, asked) = std::sync::mpsc::channel::<std::net::SocketAddr>();
    let sender = std::thread::spawn(move || {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for to in asked {
            std::thread::sleep(Duration::from_millis(20));
            tx.send_to(b"x", to).unwrap();
        }
    });
    let order = [remote.local_addr().unwrap(), local.local_addr().unwrap()];
    let mut next = 0;
    // (socket read, whether the turn yielded, whether it would again)
    let mut seen: Vec<(&str, bool, bool)> = Vec::new();
    let drain = |socket: &UdpSocket, flag: &ReadyFlag| {
        let mut read = false;
        let mut buf = [0u8; 8];
        while flag.is_set() {
            match socket.recv(&mut buf) {
                Ok(_) => read = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => flag.clear(),
                Err(e) => panic!("{e}"),
            }
        }
        read
    };
    block_on(
        std::future::poll_fn(|_| {
            let from_remote = drain(&remote, &remote_flag);
            let from_local = drain(&local, &local_flag);
            if from_remote || from_local {
                let name = if from_local { "local" } else { "remote" };
                seen.push((name, yield_before_send(), yield_before_send()));
            } else if next == 0 {
                // The first turn, before any wait: nothing is owed.
                assert!(!yield_before_send(), "no wait has ended yet");
            }
            if seen.len() == order.len() {
                return Poll::Ready(());
            }
            if next == seen.len() {
                ask.send(order[next]).unwrap();
                next += 1;
            }
            Poll::Pending
        }),
        &sources,
    )
    .unwrap();
    drop(ask);
    sender.join().unwrap();
    assert_eq!(
        seen,
        [("remote", false, false), ("local", true, false)],
        "a turn that a datagram from the network began does not yield; \
         one that a local program's packet began yields once"
    );
}
