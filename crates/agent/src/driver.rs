//! The data plane's own thread: one epoll (through mio) over the TUN
//! device and the WireGuard socket, polling the data plane's future
//! directly when either becomes readable.
//!
//! Under the async runtime every packet that woke the daemon went through
//! the reactor (readiness bookkeeping, waking the task), the scheduler and
//! the timer wheel before the data plane could read it; on an idle
//! machine, with caches gone cold between packets, that path cost more
//! than the cryptography (tens of microseconds a wake-up, measured with
//! sched and syscall tracepoints). Here a readable socket is a flag set
//! from the epoll result and a read; nothing else runs in between.
//!
//! Descriptors can be added while it runs ([`watch`]): the data plane's
//! connected sockets, one per peer endpoint.
//!
//! The rest of the daemon stays on the runtime: the data plane's channels
//! wake this thread through an eventfd (mio's `Waker`), and the runtime's
//! handle is entered so that spawned tasks and the rare wait for send
//! room register with the runtime as before. The data plane's own timer
//! ([`Ticker`]) is a timerfd in the same epoll set ([`timer`]): a tick
//! wakes this thread alone, where a runtime timer would wake the
//! runtime's thread first and that one would wake this one (three
//! context switches a tick; an idle laptop ticks once a second, four
//! times while a handshake waits).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};

mod level;
mod timer;
mod watch;
pub use level::{Muted, mute};
use timer::DeadlineTimer;
pub use watch::{Watch, take_ready, watch};

/// The token of the waker; the sources take 0, 1, ...
const WAKE: Token = Token(usize::MAX);
/// The token of the deadline's timer.
const TIMER: Token = Token(usize::MAX - 1);

/// Whether a descriptor may have something to read: set by the driver
/// when epoll reports it (edge-triggered), cleared by the read that finds
/// nothing (or that proves the queue empty). Only the data plane's thread
/// touches it; it is atomic so the devices holding it stay `Sync`.
#[derive(Clone, Debug)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl Default for ReadyFlag {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadyFlag {
    /// A flag that is set: a descriptor registered with data already
    /// queued reports no edge for it, so the first turn reads to see.
    pub fn new() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    /// Whether a read may find something.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Something may be there (an edge, or a write that makes the kernel
    /// answer at once, such as an echo reply on the TUN).
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// [`set`](Self::set); `true` when it was clear.
    pub fn raise(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }

    /// Nothing is there until the next edge.
    pub fn clear(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// A descriptor the driver waits on, with the flag it sets.
#[derive(Clone, Debug)]
pub struct Readable {
    /// The descriptor; it must stay open while the driver runs (the
    /// future that owns it is polled here, and closing it removes it from
    /// the epoll set in any case).
    pub fd: RawFd,
    /// Set when epoll reports the descriptor readable (or in error: the
    /// read then reports the error).
    pub flag: ReadyFlag,
    /// A program on this machine writes to it (the TUN device): when it
    /// ends a wait, the thread yields once before the turn's first send
    /// ([`yield_before_send`]).
    pub written_locally: bool,
    /// Reported on every wait while it holds something, not only when
    /// something new arrives ([`level`]): its reader may clear the flag
    /// without reading it empty. A wait for something else must [`mute`]
    /// it.
    pub level_triggered: bool,
}

/// Whether the turn that `events` begin should yield its CPU once before
/// it sends ([`yield_before_send`]): one of them is a descriptor that a
/// local program writes to.
fn yield_to_writer(sources: &[Readable], events: &Events) -> bool {
    events.iter().any(|event| {
        sources
            .get(event.token().0)
            .is_some_and(|source| source.written_locally)
    })
}

/// Wakes the driver's thread from any thread; wake-ups between two turns
/// collapse into one eventfd write.
struct ThreadWaker {
    waker: mio::Waker,
    /// An eventfd write is pending for this turn.
    woken: AtomicBool,
    /// A waker fired since the future last asked ([`take_wakeups`]).
    fired: AtomicBool,
}

thread_local! {
    /// The waker of the driver running on this thread.
    static CURRENT: RefCell<Option<Arc<ThreadWaker>>> = const { RefCell::new(None) };
    /// The earliest deadline a [`Ticker`] on this thread waits for.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// The loop's time ([`now`]): when this thread's driver last read the
    /// clock.
    static CLOCK: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Turns since the clock was last read; a wait that the deadline's
    /// timer ended (the deadline may have come) sets it to the limit.
    static TURNS: Cell<u32> = const { Cell::new(0) };
    /// This turn began with a wake-up by a local writer and has not
    /// yielded yet ([`yield_before_send`]).
    static YIELD_OWED: Cell<bool> = const { Cell::new(false) };
}

/// Yields this thread's CPU once (`sched_yield`) if the wait that began
/// the turn was ended by a descriptor that a program on this machine
/// writes to ([`Readable::written_locally`], the TUN device), and the
/// turn has not yielded yet; `true` when it did. Called just before the
/// turn sends a lone packet on to a peer.
///
/// Why: the wake-up often preempts the sending program inside its system
/// call. If the packet then goes on while that program is still runnable
/// on this CPU, the kernel puts the thread that receives it (the peer's
/// tunnel, when both ends share a machine, or any local reader) on the
/// other, idle CPU, which a virtual machine wakes tens of microseconds
/// later. Yielding lets the sender finish and sleep first. Not at the
/// wake-up itself: there this thread's scheduling group has just been
/// picked over the sender's, a yield moves only the thread within its
/// own group, and the sender ran in 25 of 87 such round trips; after the
/// turn's read and encryption it ran in 70 of 78 (scheduler traces in
/// deploy/bench/LATENCY.md, with the ping times). A thread with nothing
/// to yield to returns at once: one system call.
pub fn yield_before_send() -> bool {
    let owed = YIELD_OWED.with(|owed| owed.replace(false));
    if owed {
        std::thread::yield_now();
    }
    owed
}

/// Turns with no wait after which [`take_wakeups`] reads the clock for
/// the deadline anyway: under a flood the driver never waits.
const TURNS_PER_CLOCK_READ: u32 = 64;

/// Whether any waker this thread's driver handed out has fired since the
/// last call, which clears it. A source that registered its waker and has
/// not fired it has nothing new, so the future can leave every such
/// source unpolled while this says `false`; after polling only some of
/// them it calls [`look_again`]. Always `true` off a driver thread.
///
/// A [`Ticker`] deadline that has come counts as a waker that fired. It
/// is looked for when the driver's wait was ended by the deadline's
/// timer, and every [`TURNS_PER_CLOCK_READ`] turns: under a flood the
/// future may find a socket ready on every turn and never let the driver
/// wait, and the tick must still come. Not on every turn: a clock read
/// is the first touch of the vDSO's code and data pages after a wait,
/// measured at 2.8 µs on a wake-up 100 ms after the last, a third of the
/// dispatch of a lone packet.
pub fn take_wakeups() -> bool {
    CURRENT.with(|current| {
        current.borrow().as_ref().is_none_or(|waker| {
            // Both, always: the turn count must run while wakers keep
            // firing (a relay flood), or the loop's time would stop.
            let fired = waker.fired.swap(false, Ordering::AcqRel);
            deadline_passed() || fired
        })
    })
}

/// Whether this thread's [`Ticker`] deadline has come (which clears it),
/// when it is time to look ([`take_wakeups`]).
fn deadline_passed() -> bool {
    let look = TURNS.with(|turns| {
        let count = turns.get().saturating_add(1);
        turns.set(count);
        count > TURNS_PER_CLOCK_READ
    });
    if !look {
        return false;
    }
    let now = read_clock();
    DEADLINE.with(|deadline| {
        let passed = deadline.get().is_some_and(|due| now >= due);
        if passed {
            deadline.set(None);
        }
        passed
    })
}

/// Reads the clock; the reading becomes the loop's time ([`now`]).
fn read_clock() -> Instant {
    let now = Instant::now();
    CLOCK.with(|clock| clock.set(Some(now)));
    TURNS.with(|turns| turns.set(0));
    now
}

/// The loop's time, for what the packet path does with seconds: the
/// filter's idle timeouts, how fresh a direct path is, when a failed
/// connected socket may be tried again. It is the driver's last clock
/// reading: taken when the driver starts, when the [`Ticker`]'s deadline
/// has ended a wait, when a new deadline is set (after each tick), and
/// every [`TURNS_PER_CLOCK_READ`] turns when there is no wait; so it is
/// never older than one tick period plus the turn. Not before every
/// wait: the turns that move packets in between, each a wake-up with
/// cold caches, would pay for it (the first clock read after a wait
/// touches the vDSO's pages). Off a driver thread, the clock. What needs
/// the exact time (a handshake's round trip) reads the clock itself.
pub fn now() -> Instant {
    CLOCK.with(Cell::get).unwrap_or_else(Instant::now)
}

/// Whether a non-blocking call found nothing to read, or no room to
/// write. Told from the OS error code: `io::Error::kind` maps every code
/// through a table, which the read that ends each turn (and finds the
/// device empty) would fetch on a cold wake-up. Errors made in the
/// program (test devices) go by their kind.
#[inline]
pub fn would_block(e: &io::Error) -> bool {
    match e.raw_os_error() {
        Some(code) => code == libc::EAGAIN || code == libc::EWOULDBLOCK,
        None => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// The next [`take_wakeups`] says `true`: the future stopped before it
/// had polled every waker-driven source.
pub fn look_again() {
    CURRENT.with(|current| {
        if let Some(waker) = current.borrow().as_ref() {
            waker.fired.store(true, Ordering::Release);
        }
    });
}

/// A periodic timer kept by the driver: while it waits, its next
/// deadline is set on the driver's timer descriptor, which ends the
/// driver's epoll wait, and reaching it counts as a
/// waker that fired ([`take_wakeups`]). The first tick is at once; ticks
/// missed while the thread was busy are not made up, the next one comes
/// a period after the late one. Off a driver thread nothing would wake
/// the future at the deadline, so a tick not yet due asks to be polled
/// again at once: correct, but a busy wait.
#[derive(Debug)]
pub struct Ticker {
    period: Duration,
    next: Instant,
}

impl Ticker {
    /// A ticker whose first tick is due now.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            next: Instant::now(),
        }
    }

    /// Ready when a tick is due.
    pub fn poll_tick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + self.period;
            return Poll::Ready(());
        }
        if !hold_deadline(self.next) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Ticks every `period` from now on: the next one comes `period`
    /// after the last (at once if that is past). A shorter period takes
    /// effect in the wait going on, not after it.
    pub fn set_period(&mut self, period: Duration) {
        if period == self.period {
            return;
        }
        let last = self.next.checked_sub(self.period).unwrap_or(self.next);
        self.next = last.checked_add(period).unwrap_or(self.next);
        self.period = period;
        hold_deadline(self.next);
    }
}

/// Brings this thread's driver deadline forward to `next` (a later one
/// held stays: it is the earliest that wakes); `false` off a driver
/// thread, where nothing waits for deadlines.
fn hold_deadline(next: Instant) -> bool {
    if CURRENT.with(|current| current.borrow().is_none()) {
        return false;
    }
    DEADLINE.with(|deadline| {
        deadline.set(Some(deadline.get().map_or(next, |held| held.min(next))));
    });
    true
}

/// Clears [`CURRENT`], [`DEADLINE`] and the watched descriptors when the
/// driver returns or unwinds.
struct Current;

impl Current {
    fn set(waker: &Arc<ThreadWaker>, registry: mio::Registry, sources: &[Readable]) -> Self {
        CURRENT.with(|current| *current.borrow_mut() = Some(Arc::clone(waker)));
        DEADLINE.with(|deadline| deadline.set(None));
        YIELD_OWED.with(|owed| owed.set(false));
        read_clock();
        let level = sources
            .iter()
            .enumerate()
            .filter(|(_, source)| source.level_triggered)
            .map(|(i, source)| (source.fd, Token(i)))
            .collect();
        // The duplicate of the epoll descriptor that `watch` holds until
        // the driver ends.
        level::start(registry.as_raw_fd(), level);
        watch::start(registry, sources.len());
        Self
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.with(|current| *current.borrow_mut() = None);
        DEADLINE.with(|deadline| deadline.set(None));
        CLOCK.with(|clock| clock.set(None));
        watch::stop();
        level::stop();
    }
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if !self.woken.swap(true, Ordering::AcqRel)
            && let Err(e) = self.waker.wake()
        {
            // An eventfd write fails only when its counter is full, which
            // means a wake-up is already pending.
            tracing::debug!(error = %e, "data plane wake-up failed");
        }
    }
}

/// Polls `future` to completion on this thread, sleeping in epoll until
/// one of `sources` becomes readable, a waker fires or a [`Ticker`]'s
/// deadline comes. A turn polls the future once; the future finds its
/// sockets' readiness in their flags.
pub fn block_on<F: Future>(future: F, sources: &[Readable]) -> io::Result<F::Output> {
    let mut poll = mio::Poll::new()?;
    for (i, source) in sources.iter().enumerate() {
        if source.level_triggered {
            level::register(poll.registry(), source.fd, Token(i))?;
        } else {
            poll.registry()
                .register(&mut SourceFd(&source.fd), Token(i), Interest::READABLE)?;
        }
    }
    let waker = Arc::new(ThreadWaker {
        waker: mio::Waker::new(poll.registry(), WAKE)?,
        woken: AtomicBool::new(false),
        // The first turn polls every source, registering its waker.
        fired: AtomicBool::new(true),
    });
    let mut timer = DeadlineTimer::new(poll.registry(), TIMER)?;
    let _current = Current::set(&waker, poll.registry().try_clone()?, sources);
    let task_waker = Waker::from(Arc::clone(&waker));
    let mut cx = Context::from_waker(&task_waker);
    let mut future = pin!(future);
    let mut events = Events::with_capacity(sources.len() + 64);
    loop {
        // Cleared before the poll: a wake-up during or after it writes
        // the eventfd, and the wait below returns at once.
        waker.woken.store(false, Ordering::Release);
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Ok(output);
        }
        // The deadline is the timer's, set when it changes; the wait has
        // no timeout. A turn that moved packets leaves the deadline as it
        // was, and the timer holds it already: no clock read (a deadline
        // that came meanwhile makes the timer's descriptor readable, and
        // the wait returns at once). A new deadline (a tick came, the
        // period changed) is set from a clock reading, which becomes the
        // loop's time ([`now`]); one that has come already is told to
        // the future as a fired waker and forgotten (the future may be
        // waiting on something else, room to send, and a deadline left in
        // the past would make every later wait return at once), and the
        // wait only looks.
        let due = DEADLINE.with(Cell::get);
        let timeout = if due == timer.armed() {
            None
        } else {
            let now = read_clock();
            match due {
                Some(due) if due <= now => {
                    std::hint::cold_path();
                    DEADLINE.with(|deadline| deadline.set(None));
                    waker.fired.store(true, Ordering::Release);
                    Some(Duration::ZERO)
                }
                _ => {
                    timer.set(due, now)?;
                    None
                }
            }
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) => {
                std::hint::cold_path();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
        }
        let owed = timeout.is_none() && yield_to_writer(sources, &events);
        YIELD_OWED.with(|yield_owed| yield_owed.set(owed));
        // A deadline that came is found by the next take_wakeups.
        for event in &events {
            match sources.get(event.token().0) {
                Some(source) => source.flag.set(),
                None if event.token() == TIMER => {
                    std::hint::cold_path();
                    timer.fired();
                    TURNS.with(|turns| turns.set(TURNS_PER_CLOCK_READ));
                }
                None if event.token() != WAKE => watch::fired(event.token().0),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
