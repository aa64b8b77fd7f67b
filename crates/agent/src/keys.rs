//! The device's key material, generated locally. Private keys never leave
//! the state directory.

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::state::StateDir;

/// File names inside the state directory.
const WIREGUARD_KEY: &str = "wireguard.key";
const IDENTITY_KEY: &str = "identity.key";
const CLIENT_CERT: &str = "client.pem";
const CA_CERT: &str = "ca.pem";

/// Keys and certificates of an enrolled device.
pub struct DeviceKeys {
    /// WireGuard static secret.
    pub wireguard: StaticSecret,
    /// Identity key (PEM), for mutual TLS.
    pub identity_key_pem: String,
    /// Client certificate (PEM) issued by the server CA.
    pub client_cert_pem: String,
    /// The pinned server CA (PEM).
    pub ca_cert_pem: String,
}

impl DeviceKeys {
    /// WireGuard public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(&self.wireguard)
    }

    /// Loads the keys of an enrolled device.
    pub fn load(state: &StateDir) -> Result<DeviceKeys> {
        let wg = STANDARD
            .decode(state.read_private(WIREGUARD_KEY)?.trim())
            .context("wireguard.key is not base64")?;
        let wg: [u8; 32] = wg
            .try_into()
            .map_err(|_| anyhow::anyhow!("wireguard.key must hold 32 bytes"))?;
        Ok(DeviceKeys {
            wireguard: StaticSecret::from(wg),
            identity_key_pem: state.read_private(IDENTITY_KEY)?,
            client_cert_pem: state.read_private(CLIENT_CERT)?,
            ca_cert_pem: state.read_private(CA_CERT)?,
        })
    }

    /// Saves all keys (0600 each).
    pub fn save(&self, state: &StateDir) -> Result<()> {
        state.write_private(
            WIREGUARD_KEY,
            STANDARD.encode(self.wireguard.to_bytes()).as_bytes(),
        )?;
        state.write_private(IDENTITY_KEY, self.identity_key_pem.as_bytes())?;
        state.write_private(CLIENT_CERT, self.client_cert_pem.as_bytes())?;
        state.write_private(CA_CERT, self.ca_cert_pem.as_bytes())?;
        Ok(())
    }
}

/// A fresh WireGuard static secret from the OS random source.
pub fn generate_wireguard_key() -> StaticSecret {
    StaticSecret::random_from_rng(rand_core::OsRng)
}
