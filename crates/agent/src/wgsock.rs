//! The WireGuard UDP socket, registered with the reactor for readability
//! only.
//!
//! tokio's `UdpSocket` registers for writability too, and a UDP socket
//! signals "writable" each time the kernel frees one of its sent datagrams,
//! which on a local link is during the send itself. Every send thus cost
//! one more pass of the reactor (an `epoll_wait` that returns at once)
//! before the loop could sleep, and that pass delays the peer the send
//! just woke when both share a CPU. Sends here go straight to the socket;
//! only when its buffer is full does a duplicate descriptor register for
//! writability, for as long as that wait lasts.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::task::{Context, Poll};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A non-blocking UDP socket whose reads wait on the reactor and whose
/// sends wait only when the kernel's buffer is full.
#[derive(Debug)]
pub struct WgSocket {
    fd: AsyncFd<UdpSocket>,
}

impl WgSocket {
    /// Takes a non-blocking socket.
    pub fn from_std(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            fd: register(socket, Interest::READABLE)?,
        })
    }

    /// The socket itself, for socket options and quinn-udp.
    pub fn socket(&self) -> &UdpSocket {
        self.fd.get_ref()
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket().local_addr()
    }

    /// Waits until a read may succeed.
    pub async fn readable(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_readable(cx)).await
    }

    /// Ready when a read may succeed. Dropping the guard keeps the
    /// readiness: the read that follows clears it when it finds nothing
    /// (`try_read`).
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.fd.poll_read_ready(cx).map_ok(drop)
    }

    /// One read that does not wait; `WouldBlock` when nothing is there
    /// (and the next [`readable`](Self::readable) then waits).
    pub fn try_read<R>(&self, read: impl FnOnce(&UdpSocket) -> io::Result<R>) -> io::Result<R> {
        self.fd.try_io(Interest::READABLE, read)
    }

    /// One send; while the socket's buffer is full it waits for room.
    pub async fn send_with<R>(
        &self,
        mut send: impl FnMut(&UdpSocket) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            match send(self.socket()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.room().await?,
                other => return other,
            }
        }
    }

    /// Sends one datagram to `to`.
    pub async fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.send_with(|socket| socket.send_to(datagram, to)).await
    }

    /// Waits until the full send buffer has room. epoll registers a
    /// descriptor, not a socket, so a duplicate can wait for writability
    /// beside the read registration; it is dropped (and deregistered)
    /// once there is room. Registration reports the current state, so
    /// room made before it is not missed.
    pub(crate) async fn room(&self) -> io::Result<()> {
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
    async fn waiting_for_room_beside_the_read_registration_works_and_reads_go_on() {
        let a = WgSocket::from_std(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let b = WgSocket::from_std(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut buf = [0u8; 64];
        for round in 0..3u8 {
            // An empty buffer has room: the duplicate's registration says
            // so at once, without disturbing the read registration.
            tokio::time::timeout(Duration::from_secs(5), a.room())
                .await
                .unwrap()
                .unwrap();
            a.send_to(&[round; 10], b_addr).await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), b.readable())
                .await
                .unwrap()
                .unwrap();
            let (n, from) = b.try_read(|s| s.recv_from(&mut buf)).unwrap();
            assert_eq!((n, from, buf[0]), (10, a_addr, round));
            // Nothing more: the readiness is cleared and the next wait
            // sleeps until the next datagram.
            assert_eq!(
                b.try_read(|s| s.recv_from(&mut buf)).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            assert!(
                tokio::time::timeout(Duration::from_millis(50), b.readable())
                    .await
                    .is_err()
            );
        }
    }
}
