//! The server's internal certificate authority.
//!
//! One self-signed CA per network. It signs the server's TLS certificate (with
//! every name and address the server is reached by) and the client
//! certificates devices use for mutual TLS. The CA key lives in the data
//! directory, mode 0600, and never leaves it.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

use crate::files::{read_private, write_private};

/// Lifetime of a device client certificate.
pub const CLIENT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// The loaded CA: its certificate and the issuer used to sign.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// PEM certificate chain and key for the TLS listener.
pub struct ServerIdentity {
    /// Server certificate followed by the CA certificate.
    pub chain_pem: String,
    /// The server's private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl CertificateAuthority {
    /// Creates a new CA and writes `ca.pem` and `ca.key` into `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "ztmesh network CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        write_private(&dir.join("ca.key"), key.serialize_pem().as_bytes())?;
        std::fs::write(dir.join("ca.pem"), cert.pem()).context("writing ca.pem")?;
        Self::load(dir)
    }

    /// Loads the CA from `ca.pem` and `ca.key` in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cert_pem = std::fs::read_to_string(dir.join("ca.pem"))
            .with_context(|| format!("reading {}", dir.join("ca.pem").display()))?;
        let key_pem = read_private(&dir.join("ca.key"))?;
        let key = KeyPair::from_pem(&key_pem).context("parsing ca.key")?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).context("parsing ca.pem")?;
        let cert_der = pem_to_der(&cert_pem).context("ca.pem holds no certificate")?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// PEM of the CA certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate (DER), lowercase hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }

    /// Issues a TLS server certificate naming every given DNS name and address.
    pub fn issue_server(&self, names: &[String], addresses: &[IpAddr]) -> Result<ServerIdentity> {
        let key = KeyPair::generate().context("generating the server key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "ztmesh coordination server");
        params.distinguished_name = dn;
        for name in names {
            let san = rcgen::string::Ia5String::try_from(name.clone())
                .with_context(|| format!("`{name}` is not a valid DNS name"))?;
            params.subject_alt_names.push(SanType::DnsName(san));
        }
        for addr in addresses {
            params.subject_alt_names.push(SanType::IpAddress(*addr));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the server certificate")?;
        Ok(ServerIdentity {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a device's CSR. Only the CSR's public key is used: the subject,
    /// usages and lifetime are set here, never taken from the device.
    /// Returns the PEM certificate and the SHA-256 fingerprint of its DER.
    /// The certificate is valid until `valid_until` (Unix seconds, the node
    /// key expiry) or for a year when the key never expires.
    pub fn sign_device(
        &self,
        csr_pem: &str,
        device_id: &str,
        valid_until: Option<i64>,
    ) -> Result<(String, String)> {
        if csr_pem.len() > 16 * 1024 {
            bail!("certificate signing request is too large");
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| anyhow::anyhow!("invalid certificate signing request: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = std::time::SystemTime::now();
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = match valid_until.and_then(|at| u64::try_from(at).ok()) {
            Some(at) => (std::time::UNIX_EPOCH + Duration::from_secs(at)).into(),
            None => (now + CLIENT_CERT_LIFETIME).into(),
        };
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .context("signing the device certificate")?;
        let fingerprint = hex::encode(Sha256::digest(cert.der()));
        Ok((cert.pem(), fingerprint))
    }
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn der_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_server_and_device_certs() {
        let dir = tempdir();
        let ca = CertificateAuthority::create(&dir).unwrap();
        let again = CertificateAuthority::load(&dir).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        let id = ca
            .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        assert_eq!(id.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        let device_key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&device_key)
            .unwrap()
            .pem()
            .unwrap();
        let (pem, fp) = ca.sign_device(&csr, "dev-1", None).unwrap();
        assert_eq!(der_fingerprint(&pem_to_der(&pem).unwrap()), fp);
        assert!(ca.sign_device("garbage", "dev-1", None).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ztmesh-pki-{}-{}",
            std::process::id(),
            crate::secrets::random_token(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
