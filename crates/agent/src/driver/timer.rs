//! The driver's deadline as a timer descriptor in its epoll set.
//!
//! An epoll wait with a timeout arms a kernel timer when it starts and
//! cancels it when a packet ends it first: two passes through the
//! kernel's timer code (its red-black tree of timers, with cold caches)
//! on every wake-up of an idle tunnel, on both ends of a round trip. A
//! timerfd is set only when the deadline changes (about once a tick), and
//! the waits for packets have no timeout. boringtun does the same (its
//! timers are timerfds; it waits with no timeout).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

/// A one-shot timer on the monotonic clock (the clock of `Instant`).
pub(super) struct DeadlineTimer {
    fd: OwnedFd,
    /// The deadline it is set to; `None`: off (or it fired).
    set_to: Option<Instant>,
}

impl DeadlineTimer {
    /// A timer, off, registered with `registry` under `token`.
    pub(super) fn new(registry: &Registry, token: Token) -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Self { fd, set_to: None })
    }

    /// Sets the timer to fire at `due` (`None`: off), unless it is set so
    /// already: most turns cost nothing. `due` must be after `now`, the
    /// clock's reading (a deadline that has come is the caller's to
    /// handle); the timer never fires before it.
    pub(super) fn set(&mut self, due: Option<Instant>, now: Instant) -> io::Result<()> {
        if due == self.set_to {
            return Ok(());
        }
        // A zero value turns the timer off; a deadline after `now` is at
        // least a nanosecond away.
        let left = due.map_or(Duration::ZERO, |due| due.saturating_duration_since(now));
        let value = Itimerspec {
            it_interval: timespec(Duration::ZERO),
            it_value: timespec(left),
        };
        timerfd_settime(&self.fd, TimerfdTimerFlags::empty(), &value)?;
        self.set_to = due;
        Ok(())
    }

    /// The deadline the timer is set to; `None` when it is off (or has
    /// fired).
    pub(super) fn armed(&self) -> Option<Instant> {
        self.set_to
    }

    /// The timer fired: it is off until set again.
    pub(super) fn fired(&mut self) {
        // Clears the descriptor's readiness; nothing to read (a race with
        // a new setting) is fine.
        let mut expirations = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut expirations);
        self.set_to = None;
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    }
}
