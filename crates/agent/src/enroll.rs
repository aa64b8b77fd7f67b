//! Enrollment: from a join token to an enrolled device with its own keys.

use anyhow::{Context, Result, anyhow};
use rcgen::{CertificateParams, KeyPair};
use ztmesh_proto::{JoinToken, v1};
use ztmesh_rpc::v1::control_client::ControlClient;

use x25519_dalek::StaticSecret;

use crate::keys::{DeviceKeys, generate_wireguard_key};
use crate::state::{Enrollment, StateDir};
use crate::tls;

/// Freshly generated device keys and the CSR for the identity key.
pub struct NewKeys {
    /// WireGuard static secret.
    pub wireguard: StaticSecret,
    /// Identity key for mutual TLS.
    pub identity: KeyPair,
    /// PEM certificate signing request for `identity`.
    pub csr_pem: String,
}

impl NewKeys {
    /// Generates both keys locally.
    pub fn generate() -> Result<NewKeys> {
        let wireguard = generate_wireguard_key();
        let identity = KeyPair::generate().context("generating the identity key")?;
        let csr_pem = CertificateParams::default()
            .serialize_request(&identity)
            .context("creating the certificate signing request")?
            .pem()
            .context("encoding the certificate signing request")?;
        Ok(NewKeys {
            wireguard,
            identity,
            csr_pem,
        })
    }

    /// The WireGuard public key, as sent to the server.
    pub fn wireguard_public(&self) -> Vec<u8> {
        x25519_dalek::PublicKey::from(&self.wireguard)
            .as_bytes()
            .to_vec()
    }
}

/// Enrolls this device with `token` and saves keys and record in `state`.
/// Keys are generated here; only public keys and a CSR are sent.
pub async fn enroll(state: &StateDir, token: &str, name: &str) -> Result<Enrollment> {
    let token = JoinToken::decode(token)?;
    let ca_pem = tls::fetch_pinned_ca(&token.server_url, &token.ca_fingerprint).await?;
    let keys = NewKeys::generate()?;
    let channel = tls::channel(&token.server_url, &ca_pem, None).await?;
    let response = ControlClient::new(channel)
        .enroll(v1::EnrollRequest {
            join_secret: token.secret.clone(),
            name: name.to_owned(),
            wireguard_public_key: keys.wireguard_public(),
            csr_pem: keys.csr_pem.clone(),
        })
        .await
        .map_err(|status| refused("enrollment", &status))?
        .into_inner();
    save(state, keys, ca_pem, token.server_url, response)
}

/// The error for a refused or failed enrollment call.
pub(crate) fn refused(what: &str, status: &tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unauthenticated
        | tonic::Code::AlreadyExists
        | tonic::Code::InvalidArgument
        | tonic::Code::ResourceExhausted => anyhow!("{what} refused: {}", status.message()),
        code => anyhow!("{what} failed ({code}): {}; try again", status.message()),
    }
}

/// Saves the keys and the server's answer as this device's enrollment.
pub(crate) fn save(
    state: &StateDir,
    keys: NewKeys,
    ca_pem: String,
    server_url: String,
    response: v1::EnrollResponse,
) -> Result<Enrollment> {
    let device_keys = DeviceKeys {
        wireguard: keys.wireguard,
        identity_key_pem: keys.identity.serialize_pem(),
        client_cert_pem: response.client_cert_pem,
        ca_cert_pem: ca_pem,
    };
    device_keys.save(state)?;
    let enrollment = Enrollment {
        device_id: response.device_id,
        name: response.device_name,
        addresses: response.addresses,
        server_url,
        key_expires_at: response.key_expires_at,
    };
    state.save_enrollment(&enrollment)?;
    if response.pending_approval {
        tracing::warn!(name = %enrollment.name, "enrolled, but an administrator must approve this device before it reaches anyone: `ztmesh admin devices approve {}`", enrollment.name);
    }
    Ok(enrollment)
}

/// The default device name: the host name, lowercased, with anything other
/// than letters, digits and '-' replaced.
pub fn default_name() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "device".to_owned());
    let name: String = host
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() {
        "device".to_owned()
    } else {
        name
    }
}
