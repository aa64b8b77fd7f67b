//! The daemon's state directory: keys (0600), certificates and the
//! enrollment record. The directory itself is 0700 and the daemon refuses
//! to start when either is looser.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// What enrollment produced and later runs reuse.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Enrollment {
    /// Device id assigned by the server.
    pub device_id: String,
    /// Device name.
    pub name: String,
    /// Overlay addresses (CIDR strings).
    pub addresses: Vec<String>,
    /// Coordination server URL.
    pub server_url: String,
    /// Node key expiry, Unix seconds; 0 = never.
    #[serde(default)]
    pub key_expires_at: i64,
}

impl Enrollment {
    /// Refuses to start with a node key past its expiry: the device must
    /// re-authenticate (its certificate ends then too).
    pub fn check_not_expired(&self) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        if self.key_expires_at != 0 && self.key_expires_at <= now {
            bail!(
                "the node key of `{}` expired {} s ago; re-authenticate: `ztmesh login --server {} --force` for a user's device, or a new join token and state directory for a server",
                self.name,
                now - self.key_expires_at,
                self.server_url
            );
        }
        Ok(())
    }
}

/// Paths inside a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating with mode 0700 when absent) a state directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<StateDir> {
        let root = root.into();
        if !root.exists() {
            std::fs::create_dir_all(&root)
                .with_context(|| format!("creating the state directory {}", root.display()))?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
        }
        let mode = std::fs::metadata(&root)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} has mode {mode:o}; it holds private keys and must be private: run `chmod 700 {}`",
                root.display(),
                root.display()
            );
        }
        Ok(StateDir { root })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The status socket `ztmesh status` talks to.
    pub fn socket_path(&self) -> PathBuf {
        Self::socket_path_in(&self.root)
    }

    /// The status socket of the state directory `root`, without opening it.
    pub fn socket_path_in(root: &Path) -> PathBuf {
        root.join("ztmesh.sock")
    }

    /// The enrollment record, if this device was enrolled.
    pub fn enrollment(&self) -> Result<Option<Enrollment>> {
        let path = self.root.join("device.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)?;
        Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; remove the state directory and enroll again",
                path.display()
            )
        })?))
    }

    /// Saves the enrollment record.
    pub fn save_enrollment(&self, enrollment: &Enrollment) -> Result<()> {
        self.write_private(
            "device.json",
            serde_json::to_string_pretty(enrollment)?.as_bytes(),
        )
    }

    /// Writes a file readable only by the owner.
    pub fn write_private(&self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Reads a private file, refusing one that others can read.
    pub fn read_private(&self, name: &str) -> Result<String> {
        let path = self.root.join(name);
        let meta =
            std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} has mode {mode:o}; key files must be 0600: run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }
}
