//! One UDP port, one receive queue per device. The relay's UDP socket is
//! bound with `SO_REUSEPORT`; once a device is heard from, the relay opens
//! a second socket on the same address and port, connected to the
//! device's address. Linux delivers a datagram to the connected socket
//! whose remote address matches it before any unconnected one, so each
//! device's datagrams wait in a queue of their own: a device that floods
//! the relay fills its own queue and loses its own datagrams, not the
//! other devices'. Nothing changes on the wire and no other port needs
//! opening. Only sockets of the same effective user can join the port.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::sockets::{UDP_BUFFER_BYTES, size_buffers};

fn reusable(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    size_buffers(&socket, UDP_BUFFER_BYTES);
    Ok(socket)
}

/// The relay's UDP socket on `addr`, which the devices' own sockets can
/// join. Needs a Tokio runtime.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = reusable(addr)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// A socket on `local` (the relay's, from [`bind`]) that receives only
/// what `peer` sends there. Until it is connected it shares the port's
/// other datagrams, so its reader must handle any datagram, as the
/// relay's does. Needs a Tokio runtime.
pub fn connect(local: SocketAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let socket = reusable(local)?;
    socket.bind(&local.into())?;
    socket.connect(&peer.into())?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connected_socket_takes_its_peers_datagrams_only() {
        let shared = bind(([127, 0, 0, 1], 0).into()).unwrap();
        let local = shared.local_addr().unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let own = connect(local, a.local_addr().unwrap()).unwrap();
        assert_eq!(own.local_addr().unwrap(), local);
        for i in 0..20u8 {
            a.send_to(&[b'a', i], local).unwrap();
            b.send_to(&[b'b', i], local).unwrap();
        }
        let mut buf = [0u8; 8];
        for i in 0..20u8 {
            let n = own.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &[b'a', i]);
            let (n, from) = shared.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], from), (&[b'b', i][..], b.local_addr().unwrap()));
        }
        assert!(
            own.try_recv(&mut buf).is_err(),
            "b's datagram reached a's socket"
        );
        assert!(
            shared.try_recv(&mut buf).is_err(),
            "a's datagram reached the shared socket"
        );
        // Replies from the device's socket come from the relay's port.
        own.send(b"ack").await.unwrap();
        let (n, from) = a.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"ack"[..], local));
    }

    #[tokio::test]
    async fn a_port_taken_without_reuse_is_an_error() {
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = bind(plain.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
