//! TLS towards the coordination server.
//!
//! Before enrollment the device knows only the CA fingerprint from the join
//! token. It opens one TLS connection that records the presented chain,
//! checks that the chain carries a certificate with exactly that fingerprint,
//! and from then on uses that CA as the only trust root (with normal
//! certificate and host name verification by tonic/rustls).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Fetches the server's CA certificate and checks it against the pinned
/// fingerprint. Returns the CA as PEM.
pub async fn fetch_pinned_ca(server_url: &str, fingerprint: &str) -> Result<String> {
    let (host, port) = host_port(server_url)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(ChainRecorder {
        chain: Mutex::default(),
        provider: Arc::clone(&provider),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| anyhow!("timed out connecting to {server_url}"))?
    .with_context(|| {
        format!("cannot connect to {server_url}; is the server running and reachable?")
    })?;
    let name = ServerName::try_from(host.clone()).context("server host name")?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake with {server_url} timed out"))?
        .with_context(|| format!("TLS handshake with {server_url} failed"))?;
    let chain = recorder
        .chain
        .lock()
        .map_err(|_| anyhow!("certificate recorder poisoned"))?
        .clone();
    let mut seen = Vec::new();
    for cert in &chain {
        let actual = hex::encode(Sha256::digest(cert.as_ref()));
        if actual.eq_ignore_ascii_case(fingerprint) {
            return Ok(der_to_pem(cert.as_ref()));
        }
        seen.push(actual);
    }
    bail!(
        "the server at {server_url} did not present the CA the join token names (expected fingerprint {fingerprint}, saw {}); the token is for another server, or something is intercepting the connection",
        seen.join(", ")
    )
}

/// A gRPC channel with the pinned CA as the only root and, when given, the
/// device's client certificate for mutual TLS.
pub async fn channel(
    server_url: &str,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Channel> {
    let (host, _) = host_port(server_url)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(host);
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(server_url.to_owned())
        .with_context(|| format!("invalid server URL `{server_url}`"))?
        .tls_config(tls)
        .context("TLS configuration")?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server_url}"))
}

/// Host and port of an `https://host:port` URL (IPv6 hosts in brackets).
pub fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("server URL `{url}` must start with https://"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .with_context(|| format!("bad port in `{url}`"))?,
        ),
        _ => (authority, 443),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("server URL `{url}` has no host");
    }
    Ok((host.to_owned(), port))
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Accepts any chain but records it; trust is decided afterwards by the
/// fingerprint check, and nothing is sent over this connection.
#[derive(Debug)]
struct ChainRecorder {
    chain: Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainRecorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut chain) = self.chain.lock() {
            chain.push(end_entity.clone().into_owned());
            chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            host_port("https://10.0.0.1:7443").unwrap(),
            ("10.0.0.1".into(), 7443)
        );
        assert_eq!(
            host_port("https://[::1]:7443").unwrap(),
            ("::1".into(), 7443)
        );
        assert_eq!(
            host_port("https://example.com").unwrap(),
            ("example.com".into(), 443)
        );
        assert!(host_port("http://example.com").is_err());
    }
}
