//! PEM to what rustls takes: the network CA as the only root, and a
//! certificate chain with its key.

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A root store holding the network CA alone.
pub fn roots(ca_pem: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("reading the CA certificate")?)?;
    }
    Ok(roots)
}

/// A certificate chain and its private key; `whose` names them in errors.
pub fn identity(
    chain_pem: &str,
    key_pem: &str,
    whose: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the {whose} certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .with_context(|| format!("reading the {whose} key"))?;
    Ok((chain, key))
}
