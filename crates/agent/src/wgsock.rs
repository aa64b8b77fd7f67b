//! The WireGuard UDP socket. Reads are driven by the data plane's own
//! epoll ([`crate::driver`]): the socket is not registered with the async
//! runtime for readability, so a datagram wakes only the data plane's
//! thread.
//!
//! Nor is it registered for writability: a UDP socket signals "writable"
//! each time the kernel frees one of its sent datagrams, which on a local
//! link is during the send itself, and every send would cost one more
//! reactor pass. Sends go straight to the socket and never wait; only when
//! the data plane finds its buffer full does a duplicate descriptor
//! register with the runtime for writability, for as long as that wait
//! lasts ([`WgSocket::room`]).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::driver::{Readable, ReadyFlag};

/// A non-blocking UDP socket whose reads follow the data plane driver's
/// readiness flag and whose sends wait only when the kernel's buffer is
/// full.
#[derive(Debug)]
pub struct WgSocket {
    socket: UdpSocket,
    readable: ReadyFlag,
}

impl WgSocket {
    /// Takes a socket and makes it non-blocking.
    pub fn from_std(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            readable: ReadyFlag::new(),
        })
    }

    /// The socket itself, for socket options and quinn-udp.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// What the driver waits on for this socket.
    pub fn source(&self) -> Readable {
        Readable {
            fd: self.socket.as_raw_fd(),
            flag: self.readable.clone(),
            written_locally: false,
            level_triggered: false,
        }
    }

    /// Whether a read may find something (no empty read since the last
    /// edge).
    pub fn may_read(&self) -> bool {
        self.readable.is_set()
    }

    /// Ready when a read may succeed. Not ready registers no waker: the
    /// driver polls again when epoll reports the socket.
    pub fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.readable.is_set() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// One read that does not wait; `WouldBlock` when nothing is there,
    /// without a system call when the driver has seen nothing new.
    pub fn try_read<R>(&self, read: impl FnOnce(&UdpSocket) -> io::Result<R>) -> io::Result<R> {
        if !self.readable.is_set() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let result = read(&self.socket);
        if matches!(&result, Err(e) if crate::driver::would_block(e)) {
            self.readable.clear();
        }
        result
    }

    /// The last read emptied the queue (a `recvmmsg` that filled fewer
    /// messages than it had room for stops at the empty queue): the next
    /// datagram raises a new edge, so the read that would only find
    /// nothing is skipped.
    pub fn drained(&self) {
        self.readable.clear();
    }

    /// Sends one datagram on a connected socket without waiting:
    /// `WouldBlock` when the socket's buffer is full. With no address the
    /// kernel uses the route it keeps for the connection.
    pub fn try_send(&self, datagram: &[u8]) -> io::Result<usize> {
        self.socket.send(datagram)
    }

    /// Sends one datagram to `to` without waiting: `WouldBlock` when the
    /// socket's buffer is full.
    pub fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(datagram, to)
    }

    /// Waits until the full send buffer has room. epoll registers a
    /// descriptor, not a socket, so a duplicate can wait for writability
    /// beside the read registration; it is dropped (and deregistered)
    /// once there is room. Registration reports the current state, so
    /// room made before it is not missed.
    pub async fn room(&self) -> io::Result<()> {
        let duplicate = register(self.socket().try_clone()?, Interest::WRITABLE)?;
        duplicate.writable().await.map(drop)
    }
}

/// Registers an owned socket with the reactor. tokio 1.54 deprecates the
/// safe constructor for types whose `as_raw_fd` could change or close
/// under it; a `std::net::UdpSocket` owns its descriptor for its whole
/// life, which is what the unsafe replacement asks the caller to promise,
/// so the safe call is sound here and the crate stays free of `unsafe`.
#[allow(deprecated)]
fn register(socket: UdpSocket, interest: Interest) -> io::Result<AsyncFd<UdpSocket>> {
    AsyncFd::with_interest(socket, interest)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reads_follow_the_flag_and_waiting_for_room_works() {
        let a = WgSocket::from_std(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let b = WgSocket::from_std(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut buf = [0u8; 64];
        for round in 0..3u8 {
            // An empty buffer has room: the duplicate's registration says
            // so at once.
            tokio::time::timeout(Duration::from_secs(5), a.room())
                .await
                .unwrap()
                .unwrap();
            a.try_send_to(&[round; 10], b_addr).unwrap();
            // The driver would set the flag on the edge.
            b.source().flag.set();
            let (n, from) = loop {
                match b.try_read(|s| s.recv_from(&mut buf)) {
                    Ok(got) => break got,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        b.source().flag.set();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!((n, from, buf[0]), (10, a_addr, round));
            // Nothing more: the read clears the flag, and the next one
            // makes no system call until the driver sets it again.
            assert_eq!(
                b.try_read(|s| s.recv_from(&mut buf)).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            assert!(!b.source().flag.is_set());
            let mut called = false;
            let _ = b.try_read(|_| {
                called = true;
                Ok(())
            });
            assert!(!called);
        }
    }
}
