//! The gate in front of the Admin service: every call is authenticated
//! (bearer API key, not expired, not revoked) and checked against the role
//! table before any handler runs. Being a wrapper around the whole service,
//! it also covers RPCs added later: one that the table does not name is
//! refused for every role.
//!
//! The caller's [`Actor`] (key id, role, peer address) is handed to the
//! handler in the request extensions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::roles::{ADMIN_SERVICE, Role, RoleTable};
use crate::error::internal;
use crate::secrets::{split_secret, verify_secret};
use crate::store::{Actor, Store, unix_now};

/// Wraps the Admin service (`inner`) with authentication and the role table.
#[derive(Clone)]
pub struct AdminGate<S> {
    inner: S,
    checks: Arc<Checks>,
}

struct Checks {
    store: Store,
    roles: RoleTable,
}

impl<S> AdminGate<S> {
    /// Puts the gate in front of `inner`.
    pub fn new(inner: S, store: Store, roles: RoleTable) -> Self {
        Self {
            inner,
            checks: Arc::new(Checks { store, roles }),
        }
    }
}

impl<S: NamedService> NamedService for AdminGate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for AdminGate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone is not ready; call the instance poll_ready prepared.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let checks = Arc::clone(&self.checks);
        let call = Call::of(&request);
        Box::pin(async move {
            match checks.admit(&call).await {
                Ok(actor) => {
                    request.extensions_mut().insert(actor);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// What the checks need from a request, owned (the body stays behind).
struct Call {
    /// Method name, e.g. `SetPolicy`; empty for a path outside the service.
    rpc: String,
    /// The `authorization` header, if it is text.
    authorization: Option<String>,
    /// Peer address, empty if unknown.
    source: String,
}

impl Call {
    fn of(request: &http::Request<Body>) -> Call {
        Call {
            rpc: request
                .uri()
                .path()
                .strip_prefix(&format!("/{ADMIN_SERVICE}/"))
                .unwrap_or_default()
                .to_owned(),
            authorization: request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            source: remote_addr(request).map_or_else(String::new, |a| a.to_string()),
        }
    }
}

impl Checks {
    /// The caller, if its key is valid and its role may call this RPC.
    async fn admit(&self, call: &Call) -> Result<Actor, Status> {
        let (key_id, role) = self.authenticate(call.authorization.as_deref()).await?;
        let actor = Actor {
            id: format!("apikey:{key_id}"),
            role: role.as_str().to_owned(),
            source: call.source.clone(),
        };
        let rpc = call.rpc.as_str();
        if self.roles.allows(rpc, role) {
            return Ok(actor);
        }
        let allowed: Vec<&str> = self
            .roles
            .roles_for(rpc)
            .into_iter()
            .map(Role::as_str)
            .collect();
        tracing::info!(key = %key_id, %role, rpc, "admin call refused by the role table");
        // Refusals of valid keys are security events: audited, best effort.
        if let Err(e) = self.store.audit(&actor, "admin.denied", rpc, "", "").await {
            tracing::warn!(error = %format!("{e:#}"), "auditing a refused admin call failed");
        }
        Err(Status::permission_denied(if allowed.is_empty() {
            format!("`{rpc}` is not in the admin role table, so no key may call it")
        } else {
            format!(
                "an API key with role `{role}` may not call `{rpc}`; roles allowed: {} (see proto/ztmesh/v1/admin-roles.md)",
                allowed.join(", ")
            )
        }))
    }

    /// The key id and role of a valid, usable bearer key.
    async fn authenticate(&self, authorization: Option<&str>) -> Result<(String, Role), Status> {
        let unauthenticated = || {
            Status::unauthenticated(
                "a valid admin API key is required: send `authorization: Bearer ztk_ID.SECRET` (the CLI: --api-key or ZTMESH_API_KEY; `ztmesh server init` prints the first owner key)",
            )
        };
        let header = authorization.ok_or_else(unauthenticated)?;
        let key = header.strip_prefix("Bearer ").ok_or_else(unauthenticated)?;
        let (id, secret) = split_secret(key.trim()).ok_or_else(unauthenticated)?;
        let (stored, record) = self
            .store
            .api_key(id)
            .await
            .map_err(internal)?
            .ok_or_else(unauthenticated)?;
        if !verify_secret(secret, &stored) {
            return Err(unauthenticated());
        }
        if record.revoked_at.is_some() {
            return Err(Status::unauthenticated(format!(
                "API key `{id}` was revoked; ask an owner or admin for a new key (`ztmesh admin api-keys create`)"
            )));
        }
        if let Some(at) = record.expires_at.filter(|at| *at <= unix_now()) {
            return Err(Status::unauthenticated(format!(
                "API key `{id}` expired at {}; ask an owner or admin for a new key (`ztmesh admin api-keys create`)",
                rfc3339(at)
            )));
        }
        let role = record.role.parse::<Role>().map_err(|_| {
            Status::permission_denied(format!(
                "API key `{id}` has role `{}`, which this server does not know; ask an owner for a key with a known role",
                record.role
            ))
        })?;
        Ok((id.to_owned(), role))
    }
}

/// The peer address, as tonic's `Request::remote_addr` finds it.
fn remote_addr(request: &http::Request<Body>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

/// Unix seconds as RFC 3339 (UTC), for messages.
pub(super) fn rfc3339(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .map_or_else(
            || unix.to_string(),
            |t| humantime::format_rfc3339_seconds(t).to_string(),
        )
}
