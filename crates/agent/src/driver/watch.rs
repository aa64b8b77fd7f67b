//! Descriptors the driver watches beside its fixed sources, added and
//! removed while it runs: the data plane's connected sockets, one per
//! peer endpoint that carries traffic. Each is told readable through its
//! flag, as the fixed sources are, and its id is queued so that the data
//! plane reads only the ones that fired (never a scan of every peer).

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::ReadyFlag;

/// The watched descriptors of the driver on this thread.
struct Watched {
    registry: Registry,
    /// Tokens below this are the driver's fixed sources.
    base: usize,
    /// The flag of each watched descriptor, by id (token - base).
    flags: Vec<Option<ReadyFlag>>,
    /// Ids that became readable since the last [`take_ready`], once each
    /// until the data plane finds the descriptor empty.
    ready: Vec<usize>,
}

thread_local! {
    static WATCHED: RefCell<Option<Watched>> = const { RefCell::new(None) };
}

/// The driver on this thread starts: watches go to `registry`, with
/// tokens from `base` up.
pub(super) fn start(registry: Registry, base: usize) {
    WATCHED.with(|watched| {
        *watched.borrow_mut() = Some(Watched {
            registry,
            base,
            flags: Vec::new(),
            ready: Vec::new(),
        });
    });
}

/// The driver on this thread is gone; watches still held do nothing
/// when dropped.
pub(super) fn stop() {
    WATCHED.with(|watched| *watched.borrow_mut() = None);
}

/// epoll reported `token` (not one of the fixed sources) readable.
pub(super) fn fired(token: usize) {
    WATCHED.with(|watched| {
        let mut watched = watched.borrow_mut();
        let Some(watched) = watched.as_mut() else {
            return;
        };
        let Some(id) = token.checked_sub(watched.base) else {
            return;
        };
        if let Some(Some(flag)) = watched.flags.get(id)
            && flag.raise()
        {
            watched.ready.push(id);
        }
    });
}

/// A descriptor the driver on this thread watches for reads until this
/// is dropped. Drop it before closing the descriptor.
#[derive(Debug)]
pub struct Watch {
    id: usize,
    fd: RawFd,
}

impl Watch {
    /// Its id, as [`take_ready`] gives it; taken again by a later watch
    /// once this one is dropped.
    pub fn id(&self) -> usize {
        self.id
    }
}

/// Watches `fd`: when it becomes readable the driver sets `flag` and
/// queues the id. Fails off a driver thread, and when epoll refuses.
pub fn watch(fd: RawFd, flag: ReadyFlag) -> io::Result<Watch> {
    WATCHED.with(|watched| {
        let mut watched = watched.borrow_mut();
        let watched = watched
            .as_mut()
            .ok_or_else(|| io::Error::other("not on the data plane's thread"))?;
        let id = watched
            .flags
            .iter()
            .position(Option::is_none)
            .unwrap_or(watched.flags.len());
        watched.registry.register(
            &mut SourceFd(&fd),
            Token(watched.base + id),
            Interest::READABLE,
        )?;
        match watched.flags.get_mut(id) {
            Some(slot) => *slot = Some(flag),
            None => watched.flags.push(Some(flag)),
        }
        Ok(Watch { id, fd })
    })
}

impl Drop for Watch {
    fn drop(&mut self) {
        WATCHED.with(|watched| {
            let mut watched = watched.borrow_mut();
            let Some(watched) = watched.as_mut() else {
                return;
            };
            if let Err(e) = watched.registry.deregister(&mut SourceFd(&self.fd)) {
                tracing::debug!(error = %e, "cannot stop watching a socket");
            }
            if let Some(slot) = watched.flags.get_mut(self.id) {
                *slot = None;
            }
            watched.ready.retain(|&id| id != self.id);
        });
    }
}

/// Moves the ids of watched descriptors that became readable since the
/// last call into `into`. An id comes again only after its flag was
/// cleared (a read found the descriptor empty) and a new edge came.
pub fn take_ready(into: &mut Vec<usize>) {
    WATCHED.with(|watched| {
        if let Some(watched) = watched.borrow_mut().as_mut() {
            into.append(&mut watched.ready);
        }
    });
}
