//! Enrollment: from a join token to an enrolled device with its own keys.

use anyhow::{Context, Result, anyhow};
use rcgen::{CertificateParams, KeyPair};
use ztmesh_proto::{JoinToken, v1};
use ztmesh_rpc::v1::control_client::ControlClient;

use crate::keys::{DeviceKeys, generate_wireguard_key};
use crate::state::{Enrollment, StateDir};
use crate::tls;

/// Enrolls this device with `token` and saves keys and record in `state`.
/// Keys are generated here; only public keys and a CSR are sent.
pub async fn enroll(state: &StateDir, token: &str, name: &str) -> Result<Enrollment> {
    let token = JoinToken::decode(token)?;
    let ca_pem = tls::fetch_pinned_ca(&token.server_url, &token.ca_fingerprint).await?;
    let wireguard = generate_wireguard_key();
    let identity = KeyPair::generate().context("generating the identity key")?;
    let csr = CertificateParams::default()
        .serialize_request(&identity)
        .context("creating the certificate signing request")?
        .pem()
        .context("encoding the certificate signing request")?;
    let channel = tls::channel(&token.server_url, &ca_pem, None).await?;
    let public = x25519_dalek::PublicKey::from(&wireguard);
    let response = ControlClient::new(channel)
        .enroll(v1::EnrollRequest {
            join_secret: token.secret.clone(),
            name: name.to_owned(),
            wireguard_public_key: public.as_bytes().to_vec(),
            csr_pem: csr,
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unauthenticated
            | tonic::Code::AlreadyExists
            | tonic::Code::InvalidArgument
            | tonic::Code::ResourceExhausted => anyhow!("enrollment refused: {}", status.message()),
            code => anyhow!(
                "enrollment failed ({code}): {}; try again",
                status.message()
            ),
        })?
        .into_inner();
    let keys = DeviceKeys {
        wireguard,
        identity_key_pem: identity.serialize_pem(),
        client_cert_pem: response.client_cert_pem,
        ca_cert_pem: ca_pem,
    };
    keys.save(state)?;
    let enrollment = Enrollment {
        device_id: response.device_id,
        name: response.device_name,
        addresses: response.addresses,
        server_url: token.server_url,
    };
    state.save_enrollment(&enrollment)?;
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
