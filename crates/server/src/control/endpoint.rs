//! `ReportEndpoint`: the public endpoint a daemon learned over STUN becomes
//! the endpoint its peers send to. Only an endpoint at the address the
//! server sees the device's own connection come from is taken (the port may
//! differ: that is the NAT's mapping), so a device cannot point its peers'
//! handshakes at a third party.

use std::net::SocketAddr;

use tonic::{Request, Status};
use ztmesh_proto::v1;

use super::{ControlService, canonical_ip};
use crate::error::internal;

impl ControlService {
    pub(super) async fn report_endpoint_impl(
        &self,
        request: Request<v1::EndpointReport>,
    ) -> Result<v1::EndpointReportResponse, Status> {
        let device = self.authenticate(&request).await?;
        let seen = request.remote_addr().map(|r| canonical_ip(r.ip()));
        let report = request.into_inner();
        let endpoint: SocketAddr = report.public_endpoint.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "public_endpoint `{}` is not IP:PORT",
                report.public_endpoint.escape_debug()
            ))
        })?;
        let refuse = |reason: String| {
            Ok(v1::EndpointReportResponse {
                accepted: false,
                reason,
            })
        };
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
}
