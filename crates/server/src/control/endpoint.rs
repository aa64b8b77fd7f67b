//! `ReportEndpoint`: where a daemon can be reached.
//!
//! - The public endpoint it learned over STUN becomes the endpoint its
//!   peers send to. Only an endpoint at the address the server sees the
//!   device's own connection come from is taken (the port may differ:
//!   that is the NAT's mapping), so a device cannot point its peers'
//!   handshakes at a third party on the internet.
//! - Its interface candidates (its own addresses with its WireGuard port)
//!   let peers on the same network, or without NAT between, find a direct
//!   path. They are private addresses the server cannot check, so they are
//!   limited: unicast, not in the overlay itself, at most
//!   [`MAX_CANDIDATES`]; peers only send them handshake initiations, which
//!   nobody but the device answers.

use std::net::{IpAddr, SocketAddr};

use tonic::{Request, Status};
use ztmesh_proto::v1;

use super::{ControlService, canonical_ip};
use crate::error::internal;

/// Interface candidates a device may report.
pub const MAX_CANDIDATES: usize = 8;

impl ControlService {
    pub(super) async fn report_endpoint_impl(
        &self,
        request: Request<v1::EndpointReport>,
    ) -> Result<v1::EndpointReportResponse, Status> {
        let device = self.authenticate(&request).await?;
        let seen = request.remote_addr().map(|r| canonical_ip(r.ip()));
        let report = request.into_inner();
        let candidates = self.check_candidates(&report.candidates, seen)?;
        let refuse = |reason: String| {
            Ok(v1::EndpointReportResponse {
                accepted: false,
                reason,
            })
        };
        if report.public_endpoint.is_empty() {
            self.store_candidates(&device, &candidates).await?;
            return Ok(v1::EndpointReportResponse {
                accepted: true,
                reason: String::new(),
            });
        }
        let endpoint: SocketAddr = report.public_endpoint.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "public_endpoint `{}` is not IP:PORT",
                report.public_endpoint.escape_debug()
            ))
        })?;
        let Some(seen) = seen else {
            return refuse("the server cannot tell where this connection comes from".into());
        };
        if canonical_ip(endpoint.ip()) != seen {
            return refuse(format!(
                "{endpoint} is not at {seen}, the address this device connects from; only that address is accepted"
            ));
        }
        if endpoint.port() == 0 {
            return refuse("port 0 cannot be reached".into());
        }
        self.store_candidates(&device, &candidates).await?;
        let endpoint = SocketAddr::new(seen, endpoint.port()).to_string();
        let changed = self
            .store
            .set_endpoint(&device.id, Some(&endpoint), &seen.to_string())
            .await
            .map_err(internal)?;
        if changed {
            tracing::info!(name = %device.name, %endpoint, "public endpoint reported (STUN)");
            self.hub.reload().await.map_err(internal)?;
        }
        Ok(v1::EndpointReportResponse {
            accepted: true,
            reason: String::new(),
        })
    }

    /// Checks reported candidates: each must be a unicast `IP:PORT` that
    /// could carry WireGuard (loopback only from a device the server itself
    /// sees on loopback), not inside the overlay. Duplicates are dropped.
    fn check_candidates(
        &self,
        reported: &[String],
        seen: Option<IpAddr>,
    ) -> Result<Vec<String>, Status> {
        if reported.len() > MAX_CANDIDATES {
            return Err(Status::invalid_argument(format!(
                "{} candidates reported; at most {MAX_CANDIDATES} are taken: report the addresses peers are most likely to reach",
                reported.len()
            )));
        }
        let mut checked: Vec<String> = Vec::with_capacity(reported.len());
        for text in reported {
            let bad = |why: &str| {
                Status::invalid_argument(format!("candidate `{}` {why}", text.escape_debug()))
            };
            let addr: SocketAddr = text.parse().map_err(|_| bad("is not IP:PORT"))?;
            let ip = canonical_ip(addr.ip());
            if addr.port() == 0 {
                return Err(bad("has port 0, which cannot be reached"));
            }
            if !is_unicast(ip) {
                return Err(bad("is not a unicast address"));
            }
            if ip.is_loopback() && !seen.is_some_and(|s| s.is_loopback()) {
                return Err(bad("is a loopback address, which peers cannot reach"));
            }
            if let IpAddr::V4(v4) = ip
                && self.overlay_v4.contains(&v4)
            {
                return Err(bad(&format!(
                    "is inside the overlay {}: WireGuard cannot run through its own tunnel",
                    self.overlay_v4
                )));
            }
            let normal = SocketAddr::new(ip, addr.port()).to_string();
            if !checked.contains(&normal) {
                checked.push(normal);
            }
        }
        Ok(checked)
    }

    async fn store_candidates(
        &self,
        device: &crate::store::DeviceRecord,
        candidates: &[String],
    ) -> Result<(), Status> {
        let changed = self
            .store
            .set_candidates(&device.id, candidates)
            .await
            .map_err(internal)?;
        if changed {
            tracing::info!(name = %device.name, candidates = ?candidates, "interface candidates reported");
            self.hub.reload().await.map_err(internal)?;
        }
        Ok(())
    }
}

/// Unicast and usable without a scope: not unspecified, multicast,
/// broadcast or link-local.
fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_link_local())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local()),
    }
}
