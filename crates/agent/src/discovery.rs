//! Endpoint discovery over STUN, sans I/O: which request to send when, and
//! what an answer means. The data plane sends the requests from its
//! WireGuard socket, so the address learned is the one NATs map for
//! WireGuard traffic, and hands STUN answers arriving on it back here.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use ztmesh_stun::TransactionId;

/// How often the public address is asked again (NAT mappings change and
/// expire; 25 s also keeps a UDP mapping open).
const REFRESH: Duration = Duration::from_secs(25);
/// How long to wait for an answer before asking again.
const RETRY: Duration = Duration::from_secs(2);

/// The discovery state of one daemon.
#[derive(Debug, Default)]
pub struct Discovery {
    server: Option<SocketAddr>,
    pending: Option<(TransactionId, Instant)>,
    answered_at: Option<Instant>,
    public: Option<SocketAddr>,
}

impl Discovery {
    /// Sets the STUN server (from the network map); a change asks again at once.
    pub fn set_server(&mut self, server: Option<SocketAddr>) {
        if self.server != server {
            self.server = server;
            self.pending = None;
            self.answered_at = None;
        }
    }

    /// Asks again at the next chance: the machine's addresses changed, so
    /// the mapping the last answer gave may be gone.
    pub fn renew(&mut self) {
        self.pending = None;
        self.answered_at = None;
    }

    /// The request to send now to the server, if one is due.
    pub fn due(&mut self, now: Instant) -> Option<(SocketAddr, [u8; 20])> {
        let server = self.server?;
        let waiting = self
            .pending
            .is_some_and(|(_, sent)| now.duration_since(sent) < RETRY);
        let fresh = self
            .answered_at
            .is_some_and(|at| now.duration_since(at) < REFRESH);
        if waiting || fresh {
            return None;
        }
        let mut id: TransactionId = [0; 12];
        OsRng.fill_bytes(&mut id);
        self.pending = Some((id, now));
        Some((server, ztmesh_stun::binding_request(&id)))
    }

    /// Takes a STUN datagram from `from`; returns the public address when it
    /// is an answer to the pending request (anything else is ignored).
    pub fn on_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Option<SocketAddr> {
        let (id, _) = self.pending?;
        if Some(from) != self.server {
            return None;
        }
        let public = ztmesh_stun::parse_binding_response(datagram, &id).ok()?;
        self.pending = None;
        self.answered_at = Some(now);
        if self.public != Some(public) {
            tracing::info!(%public, "public endpoint discovered (STUN)");
        }
        self.public = Some(public);
        Some(public)
    }

    /// The last address the STUN server saw us at.
    pub fn public(&self) -> Option<SocketAddr> {
        self.public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_answers_refreshes_and_retries() {
        let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let other: SocketAddr = "192.0.2.2:3478".parse().unwrap();
        let seen: SocketAddr = "203.0.113.7:41000".parse().unwrap();
        let t0 = Instant::now();
        let mut d = Discovery::default();
        assert!(d.due(t0).is_none(), "no server, no request");
        d.set_server(Some(server));
        let (to, request) = d.due(t0).unwrap();
        assert_eq!(to, server);
        assert!(
            d.due(t0 + Duration::from_secs(1)).is_none(),
            "waiting for the answer"
        );
        let id = ztmesh_stun::parse_binding_request(&request).unwrap();
        let answer = ztmesh_stun::binding_response(&id, seen, "test");
        // From someone else, or to another transaction: ignored.
        assert_eq!(d.on_datagram(other, &answer, t0), None);
        let stale = ztmesh_stun::binding_response(&[0; 12], seen, "test");
        assert_eq!(d.on_datagram(server, &stale, t0), None);
        assert_eq!(d.on_datagram(server, &answer, t0), Some(seen));
        assert_eq!(d.public(), Some(seen));
        // A replayed answer is not taken twice.
        assert_eq!(d.on_datagram(server, &answer, t0), None);
        assert!(d.due(t0 + Duration::from_secs(10)).is_none(), "fresh");
        assert!(d.due(t0 + REFRESH).is_some(), "refresh");
        // No answer: ask again after RETRY.
        let t1 = t0 + REFRESH;
        assert!(d.due(t1 + Duration::from_secs(1)).is_none());
        assert!(d.due(t1 + RETRY).is_some());
        // A new server asks at once.
        d.set_server(Some(other));
        assert_eq!(d.due(t1 + RETRY).map(|(to, _)| to), Some(other));
    }
}
