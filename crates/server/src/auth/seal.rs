//! Encryption at rest for secrets the server must read back, such as TOTP
//! seeds (passwords are hashed instead, see `password`).
//!
//! Sealed form: `v1:` followed by base64url without padding of a 12-byte
//! random nonce, the ChaCha20-Poly1305 ciphertext and its 16-byte tag. The
//! associated data (`aad`) binds a sealed value to its context (for example
//! the user id), so a value copied to another row does not open.
//!
//! Random 96-bit nonces are safe for far more values than a server stores
//! under one key (the collision risk stays negligible below 2^32 seals).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

/// Bytes in a key.
pub const KEY_LEN: usize = 32;

/// Prefix of the current sealed format.
const PREFIX: &str = "v1:";

/// Bytes of the Poly1305 tag.
const TAG_LEN: usize = 16;

/// Why a value could not be sealed or opened. No variant carries plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SealError {
    /// The text does not start with a known version prefix.
    #[error(
        "sealed value does not start with \"v1:\"; it is not a value sealed by this server, or a newer version made it"
    )]
    UnknownFormat,
    /// The part after the prefix is not base64url without padding.
    #[error(
        "sealed value is not valid base64url after the \"v1:\" prefix; it was damaged or truncated in storage"
    )]
    Encoding,
    /// The decoded value is shorter than a nonce and a tag.
    #[error(
        "sealed value is {len} bytes, shorter than the {min} of nonce and tag; it was truncated in storage"
    )]
    TooShort {
        /// Decoded length in bytes.
        len: usize,
        /// Smallest possible length.
        min: usize,
    },
    /// Authentication failed: the key is not the one that sealed the value,
    /// the associated data differs, or the value was altered. The cipher
    /// cannot tell these apart.
    #[error(
        "sealed value failed authentication: wrong key file, wrong context (associated data), or the value was altered"
    )]
    Authentication,
    /// The operating system's random source failed while making a nonce.
    #[error("could not seal: the system random source failed")]
    Random,
    /// The cipher refused the input (only for inputs beyond its size limit).
    #[error("could not seal: the input is larger than the cipher allows")]
    Cipher,
}

/// A ChaCha20-Poly1305 key for sealing secrets. `Debug` never shows it.
pub struct SecretBox {
    key: [u8; KEY_LEN],
    rng: SystemRandom,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Loads the key from `path`, or creates a new random key there (mode
    /// 0600, written and synced before use) if the file does not exist.
    ///
    /// Refuses a key file that group or others may access, and one that is
    /// not exactly [`KEY_LEN`] bytes; the error names the path and the fix.
    pub fn load_or_create(path: &Path) -> io::Result<SecretBox> {
        match File::open(path) {
            Ok(file) => read_key_file(file, path).map(Self::from_key),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match create_key_file(path) {
                Ok(key) => Ok(Self::from_key(key)),
                // Another process created it between our open and create.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let file = File::open(path).map_err(|e| context(e, "opening", path))?;
                    read_key_file(file, path).map(Self::from_key)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(context(e, "opening", path)),
        }
    }

    /// A box using `key` directly.
    pub fn from_key(key: [u8; KEY_LEN]) -> SecretBox {
        SecretBox {
            key,
            rng: SystemRandom::new(),
        }
    }

    /// Encrypts `plaintext` bound to `aad`; returns the `v1:` text form.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let (_, body) = out.split_at_mut(NONCE_LEN);
        let tag = self
            .cipher()?
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
            .map_err(|_| SealError::Cipher)?;
        out.extend_from_slice(tag.as_ref());
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&out)))
    }

    /// Decrypts a value made by [`seal`](Self::seal) with the same key and
    /// `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let encoded = sealed
            .strip_prefix(PREFIX)
            .ok_or(SealError::UnknownFormat)?;
        let mut data = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| SealError::Encoding)?;
        let min = NONCE_LEN + TAG_LEN;
        if data.len() < min {
            return Err(SealError::TooShort {
                len: data.len(),
                min,
            });
        }
        let (nonce, body) = data.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Encoding)?;
        let plaintext_len = self
            .cipher()
            .map_err(|_| SealError::Authentication)?
            .open_in_place(nonce, Aad::from(aad), body)
            .map_err(|_| SealError::Authentication)?
            .len();
        data.drain(..NONCE_LEN);
        data.truncate(plaintext_len);
        Ok(data)
    }

    /// The ring key object. Building it per call is cheap for ChaCha20 and
    /// keeps `from_key` infallible.
    fn cipher(&self) -> Result<LessSafeKey, SealError> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.key)
            .map(LessSafeKey::new)
            .map_err(|_| SealError::Cipher)
    }
}

/// Checks the mode of an open key file and reads exactly [`KEY_LEN`] bytes.
fn read_key_file(file: File, path: &Path) -> io::Result<[u8; KEY_LEN]> {
    let mode = file
        .metadata()
        .map_err(|e| context(e, "reading metadata of", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "key file {} has mode {:o}, which lets group or others access it; run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            ),
        ));
    }
    // Read one byte more than needed so a too-long file is noticed.
    let mut bytes = Vec::with_capacity(KEY_LEN + 1);
    file.take(KEY_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| context(e, "reading", path))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "key file {} is {}{} bytes, expected exactly {KEY_LEN}; restore the original key file (values sealed with it cannot be opened otherwise) or, if nothing was sealed yet, delete it so a new one is created",
                path.display(),
                if bytes.len() > KEY_LEN { "more than " } else { "" },
                bytes.len().min(KEY_LEN),
            ),
        )
    })
}

/// Creates `path` with a new random key, mode 0600, and syncs it and its
/// directory to disk. Fails with `AlreadyExists` if the file exists.
fn create_key_file(path: &Path) -> io::Result<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut key).map_err(|_| {
        io::Error::other(format!(
            "could not create key file {}: the system random source failed",
            path.display()
        ))
    })?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| context(e, "creating", path))?;
    file.write_all(&key)
        .map_err(|e| context(e, "writing", path))?;
    file.sync_all().map_err(|e| context(e, "syncing", path))?;
    // Make the new directory entry durable too.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| context(e, "syncing the directory of", path))?;
    }
    Ok(key)
}

/// `e` with the action and path in its message, keeping its kind.
fn context(e: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{action} key file {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("ztmesh-seal-test-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn round_trip() {
        let sb = SecretBox::from_key([7; KEY_LEN]);
        let sealed = sb.seal(b"totp seed", b"user:42").unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("totp"));
        assert_eq!(sb.open(&sealed, b"user:42").unwrap(), b"totp seed");
        // Fresh nonce each time.
        assert_ne!(sb.seal(b"totp seed", b"user:42").unwrap(), sealed);
        // Empty plaintext works too.
        let empty = sb.seal(b"", b"").unwrap();
        assert_eq!(sb.open(&empty, b"").unwrap(), b"");
    }

    #[test]
    fn aad_mismatch_fails() {
        let sb = SecretBox::from_key([7; KEY_LEN]);
        let sealed = sb.seal(b"seed", b"user:42").unwrap();
        assert_eq!(sb.open(&sealed, b"user:43"), Err(SealError::Authentication));
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = SecretBox::from_key([7; KEY_LEN])
            .seal(b"seed", b"a")
            .unwrap();
        let other = SecretBox::from_key([8; KEY_LEN]);
        assert_eq!(other.open(&sealed, b"a"), Err(SealError::Authentication));
    }

    #[test]
    fn tampering_fails() {
        let sb = SecretBox::from_key([7; KEY_LEN]);
        let sealed = sb.seal(b"seed", b"a").unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&sealed[3..]).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            let tampered = format!("v1:{}", URL_SAFE_NO_PAD.encode(&bytes));
            assert_eq!(
                sb.open(&tampered, b"a"),
                Err(SealError::Authentication),
                "byte {i}"
            );
            bytes[i] ^= 1;
        }
        assert_eq!(
            sb.open(&sealed.replace("v1:", "v2:"), b"a"),
            Err(SealError::UnknownFormat)
        );
        assert_eq!(sb.open("v1:not base64!", b"a"), Err(SealError::Encoding));
        assert!(matches!(
            sb.open("v1:AAAA", b"a"),
            Err(SealError::TooShort { len: 3, .. })
        ));
    }

    #[test]
    fn debug_hides_key() {
        let sb = SecretBox::from_key([0xAB; KEY_LEN]);
        assert_eq!(format!("{sb:?}"), "SecretBox(..)");
    }

    #[test]
    fn key_file_created_0600_and_reloaded() {
        let dir = TempDir::new();
        let path = dir.0.join("seal.key");
        let first = SecretBox::load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let sealed = first.seal(b"seed", b"a").unwrap();
        let second = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(second.open(&sealed, b"a").unwrap(), b"seed");
    }

    #[test]
    fn loose_mode_refused() {
        let dir = TempDir::new();
        let path = dir.0.join("seal.key");
        std::fs::write(&path, [1u8; KEY_LEN]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretBox::load_or_create(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
        assert!(msg.contains("644"), "{msg}");
    }

    #[test]
    fn wrong_length_refused() {
        let dir = TempDir::new();
        for len in [0usize, 31, 33, 64] {
            let path = dir.0.join(format!("seal-{len}.key"));
            std::fs::write(&path, vec![1u8; len]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = SecretBox::load_or_create(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "len {len}");
            let msg = err.to_string();
            assert!(
                msg.contains("expected exactly 32") && msg.contains(&path.display().to_string()),
                "{msg}"
            );
            // The bad file is left alone for the operator to inspect.
            assert_eq!(std::fs::metadata(&path).unwrap().len(), len as u64);
        }
    }
}
