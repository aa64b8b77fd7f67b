//! Interactive login: a person enrolls this device as theirs with user
//! name, password and the current TOTP code.

use anyhow::{Result, bail};
use ztmesh_proto::v1;
use ztmesh_rpc::v1::control_client::ControlClient;

use crate::enroll::{NewKeys, refused, save};
use crate::state::{Enrollment, StateDir};
use crate::tls;

/// What a login needs.
pub struct LoginRequest {
    /// Server URL, e.g. `https://ztmesh.example.com:7443`.
    pub server_url: String,
    /// SHA-256 fingerprint of the server's CA (from the admin or `server init`).
    pub ca_fingerprint: String,
    /// User name.
    pub user: String,
    /// Password (not kept after the call).
    pub password: String,
    /// Current TOTP code.
    pub totp_code: String,
    /// Device name to register.
    pub device_name: String,
    /// Replace an existing enrollment in the state directory.
    pub force: bool,
}

/// Logs in and saves the new enrollment in `state`. An existing, still
/// valid enrollment is kept unless `force` is set.
pub async fn login(state: &StateDir, request: LoginRequest) -> Result<Enrollment> {
    if let Some(existing) = state.enrollment()? {
        let expired = existing.check_not_expired().is_err();
        if !expired && !request.force {
            bail!(
                "this device is already enrolled as `{}` ({}); pass --force to replace that enrollment with a new one",
                existing.name,
                state.path().display()
            );
        }
    }
    let ca_pem = tls::fetch_pinned_ca(&request.server_url, &request.ca_fingerprint).await?;
    let keys = NewKeys::generate()?;
    let channel = tls::channel(&request.server_url, &ca_pem, None).await?;
    let response = ControlClient::new(channel)
        .login(v1::LoginRequest {
            user: request.user,
            password: request.password,
            totp_code: request.totp_code,
            name: request.device_name,
            wireguard_public_key: keys.wireguard_public(),
            csr_pem: keys.csr_pem.clone(),
        })
        .await
        .map_err(|status| refused("login", &status))?
        .into_inner();
    save(state, keys, ca_pem, request.server_url, response)
}
