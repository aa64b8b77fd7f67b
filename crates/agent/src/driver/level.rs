//! Sources reported on every wait while they hold something
//! (level-triggered), not only when something new arrives: the TUN
//! device. A read of it returns one packet whatever the buffer, so with
//! edge-triggered readiness the data plane had to read again after a lone
//! packet to learn the device was empty: a system call that found
//! nothing on every ping, on both ends, right after the send that woke
//! the peer (on one CPU the peer waits for it). Level-triggered, the
//! reader may stop after that packet; the next wait says whether more
//! came.
//!
//! The price: while the loop waits for something else (room in a full
//! socket buffer), a device left unread would end every wait at once.
//! [`mute`] silences these sources for that wait.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use mio::{Registry, Token};
use nix::sys::epoll::{EpollEvent, EpollFlags, EpollOp};

/// The level-triggered sources of the driver on this thread.
struct Level {
    /// The driver's epoll descriptor (open while the driver runs).
    epoll: RawFd,
    sources: Vec<(RawFd, Token)>,
}

thread_local! {
    static LEVEL: RefCell<Option<Level>> = const { RefCell::new(None) };
}

/// Adds `fd` to the driver's epoll set as a level-triggered source.
/// mio registers edge-triggered only; its events carry the token the same
/// way (`u64` data), so the driver reads them like the others.
pub(super) fn register(registry: &Registry, fd: RawFd, token: Token) -> io::Result<()> {
    ctl(registry.as_raw_fd(), EpollOp::EpollCtlAdd, fd, token, true)
}

/// The driver on this thread starts, with `sources` (registered by
/// [`register`]) in the epoll set `epoll`.
pub(super) fn start(epoll: RawFd, sources: Vec<(RawFd, Token)>) {
    LEVEL.with(|level| *level.borrow_mut() = Some(Level { epoll, sources }));
}

/// The driver on this thread is gone.
pub(super) fn stop() {
    LEVEL.with(|level| *level.borrow_mut() = None);
}

/// Level-triggered sources go unreported until this is dropped; a no-op
/// off a driver thread or with no such source. For a wait that is not for
/// them (room to send): while it lasts a readable device would end every
/// wait at once. An error only loses the change, reported here.
#[must_use = "the sources are reported again when this is dropped"]
pub struct Muted(());

/// Mutes the level-triggered sources until the guard is dropped.
pub fn mute() -> Muted {
    set_all(false);
    Muted(())
}

impl Drop for Muted {
    fn drop(&mut self) {
        set_all(true);
    }
}

fn set_all(reported: bool) {
    LEVEL.with(|level| {
        let level = level.borrow();
        let Some(level) = level.as_ref() else {
            return;
        };
        for &(fd, token) in &level.sources {
            if let Err(e) = ctl(level.epoll, EpollOp::EpollCtlMod, fd, token, reported) {
                // Only a closed descriptor fails here: the loop's next
                // read of it reports that.
                tracing::warn!(error = %e, fd, reported, "cannot change a data plane wait");
            }
        }
    });
}

/// One `epoll_ctl`. nix's function on raw descriptors is deprecated for
/// its `Epoll` type, which would own the driver's descriptor (mio owns
/// it) and take the source as a borrowed descriptor (the driver's sources
/// are raw: their owners keep them open while it runs, as with mio's
/// `SourceFd`); the call is the same system call, and the crate stays
/// free of `unsafe`.
#[allow(deprecated)]
fn ctl(epoll: RawFd, op: EpollOp, fd: RawFd, token: Token, reported: bool) -> io::Result<()> {
    let flags = if reported {
        EpollFlags::EPOLLIN
    } else {
        EpollFlags::empty()
    };
    let data = u64::try_from(token.0).unwrap_or(u64::MAX);
    let mut event = EpollEvent::new(flags, data);
    nix::sys::epoll::epoll_ctl(epoll, op, fd, &mut event).map_err(io::Error::from)
}

#[cfg(test)]
mod tests;
