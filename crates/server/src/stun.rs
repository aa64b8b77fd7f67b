//! The STUN responder (RFC 8489 Binding): tells each daemon the public
//! address and port its UDP packets come from, the first step of NAT
//! traversal. Answers only well-formed Binding requests, one small answer
//! per request (at most about twice the request's size, so it is a poor
//! amplifier), and never blocks: a full socket buffer drops the answer.

use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Software name sent in answers.
const SOFTWARE: &str = concat!("ztmesh ", env!("CARGO_PKG_VERSION"));

/// Binds the STUN port, with an error that says what to do.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    UdpSocket::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for STUN on udp/{addr}: {e}; choose another address with --stun-listen, or `off`"
        )
    })
}

/// Answers Binding requests on `socket` until `closing` turns true.
pub async fn serve(socket: UdpSocket, mut closing: watch::Receiver<bool>) {
    let mut buf = [0u8; 1500];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = closing.changed() => return,
        };
        let (len, from) = match received {
            Ok(received) => received,
            Err(e) => {
                // ICMP errors from earlier answers surface here; not fatal.
                tracing::debug!(error = %e, "stun receive error");
                continue;
            }
        };
        let Some(request) = buf.get(..len) else {
            continue;
        };
        let Ok(id) = ztmesh_stun::parse_binding_request(request) else {
            continue;
        };
        let answer = ztmesh_stun::binding_response(&id, canonical(from), SOFTWARE);
        if let Err(e) = socket.try_send_to(&answer, from) {
            tracing::debug!(error = %e, %from, "stun answer dropped");
        }
    }
}

/// IPv4 clients of a dual-stack socket appear as `::ffff:a.b.c.d`; report
/// them as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn answers_binding_requests_with_the_address_seen() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let server = socket.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(socket, stopped));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Garbage and WireGuard-looking packets get no answer.
        client.send_to(b"hello", server).await.unwrap();
        client
            .send_to(&[1, 0, 0, 0, 1, 2, 3, 4], server)
            .await
            .unwrap();
        let id = [9u8; 12];
        client
            .send_to(&ztmesh_stun::binding_request(&id), server)
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        let (len, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let seen = ztmesh_stun::parse_binding_response(&buf[..len], &id).unwrap();
        assert_eq!(seen, client.local_addr().unwrap());
        assert!(len <= 2 * 20 + 40, "answer of {len} bytes");
        // Exactly one answer came.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf))
                .await
                .is_err()
        );
        assert!(
            bind(server)
                .await
                .unwrap_err()
                .to_string()
                .contains("--stun-listen")
        );
        stop.send_replace(true);
        task.await.unwrap();
    }

    #[test]
    fn mapped_ipv4_is_reported_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:203.0.113.5]:4000".parse().unwrap();
        assert_eq!(canonical(mapped), "203.0.113.5:4000".parse().unwrap());
    }
}
