//! The UDP sockets' buffers, on the relay and on the devices' side, and
//! a device's socket to the relay.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Requested UDP socket buffer size, each way, for the relay's sockets
/// and the devices' sockets to it, as for the WireGuard socket. With the
/// default (208 KiB) a relayed TCP stream overflowed the relay's receive
/// queue for its sender: 40,327 datagrams dropped in 5 s, and about
/// 95,000 segments retransmitted in 10 s.
pub const UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Asks for `bytes` of receive and send buffer on `socket`; the kernel
/// grants up to `net.core.rmem_max` / `wmem_max`. A refusal is logged,
/// not fatal.
pub fn size_buffers(socket: &Socket, bytes: usize) {
    if let Err(e) = socket.set_recv_buffer_size(bytes) {
        tracing::debug!(error = %e, "could not enlarge a UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(bytes) {
        tracing::debug!(error = %e, "could not enlarge a UDP send buffer");
    }
    tracing::debug!(
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
}

/// A device's socket for its datagrams to the relay at `relay`,
/// connected there, with [`UDP_BUFFER_BYTES`] buffers. Needs a Tokio
/// runtime.
pub fn to_relay(relay: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(relay), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    size_buffers(&socket, UDP_BUFFER_BYTES);
    let any: SocketAddr = if relay.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    socket.bind(&any.into())?;
    socket.connect(&relay.into())?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_port::{bind, connect};

    /// The relay's shared socket, a device's own socket on the relay and
    /// the device's socket to the relay all get what a socket asking
    /// for [`UDP_BUFFER_BYTES`] gets (the default is smaller whatever
    /// `rmem_max` is: the kernel doubles what it grants).
    #[tokio::test]
    async fn the_sockets_ask_for_large_buffers() {
        let granted =
            |socket: &UdpSocket| socket2::SockRef::from(socket).recv_buffer_size().unwrap();
        let plain = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        let before = plain.recv_buffer_size().unwrap();
        plain.set_recv_buffer_size(UDP_BUFFER_BYTES).unwrap();
        let most = plain.recv_buffer_size().unwrap();
        let shared = bind(([127, 0, 0, 1], 0).into()).unwrap();
        let local = shared.local_addr().unwrap();
        let device = to_relay(local).unwrap();
        let own = connect(local, device.local_addr().unwrap()).unwrap();
        for socket in [&shared, &own, &device] {
            assert_eq!(granted(socket), most, "default {before}");
        }
        assert_eq!(device.peer_addr().unwrap(), local);
    }
}
