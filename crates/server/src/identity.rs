//! User identity: creating a user's secrets and checking a login (password
//! and TOTP), with the same answer and the same work for every kind of
//! failure, and failures rate-limited per user and per source address.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tonic::Status;

use crate::auth::password::{check_password_policy, hash_password, verify_password};
use crate::auth::ratelimit::LoginLimiter;
use crate::auth::seal::SecretBox;
use crate::auth::totp::TotpSecret;
use crate::store::{UserRecord, unix_now};

/// File in the data directory holding the key that seals TOTP seeds.
pub const SECRET_BOX_FILE: &str = "secrets.key";
/// Issuer shown by authenticator apps.
const TOTP_ISSUER: &str = "ztmesh";

/// What creating a user produced: stored forms, and the URI shown once.
pub struct NewUserSecrets {
    /// argon2id PHC string.
    pub password_hash: String,
    /// TOTP seed sealed with the secret box.
    pub totp_sealed: String,
    /// `otpauth://` URI for the user's authenticator.
    pub totp_uri: String,
}

/// Why user secrets could not be made.
#[derive(Debug)]
pub enum SecretsError {
    /// The password does not meet the policy; the message says why.
    Weak(String),
    /// Anything else.
    Internal(anyhow::Error),
}

/// Why a login was refused. Deliberately coarse: the device learns only
/// that it failed, or that it must wait.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    /// Too many recent failures for this user or address.
    RateLimited(Duration),
    /// Wrong user, password or code, or a disabled user.
    Failed,
}

impl LoginError {
    /// The status the device sees.
    pub fn status(&self) -> Status {
        match self {
            LoginError::RateLimited(wait) => Status::resource_exhausted(format!(
                "too many failed logins for this user or address; try again in {} s",
                wait.as_secs().max(1)
            )),
            LoginError::Failed => Status::unauthenticated(LOGIN_FAILED),
        }
    }
}

/// The one message for every failed login.
pub const LOGIN_FAILED: &str = "login failed: wrong user name, password or code";

/// Secret box, failure limiter and the decoy secret used for unknown users.
pub struct Identity {
    secret_box: SecretBox,
    limiter: LoginLimiter,
    decoy: Arc<TotpSecret>,
}

impl Identity {
    /// Loads (or creates) the secret box key in `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Identity> {
        let secret_box = SecretBox::load_or_create(&data_dir.join(SECRET_BOX_FILE))
            .context("loading the key that seals TOTP secrets")?;
        let decoy = TotpSecret::generate().map_err(|_| anyhow!("random source failed"))?;
        // The unknown-user decoy hash is made now, so that the first failed
        // login takes no longer than any other.
        crate::auth::password::warm_up();
        Ok(Identity {
            secret_box,
            limiter: LoginLimiter::default(),
            decoy: Arc::new(decoy),
        })
    }

    /// Hashes the password and makes a sealed TOTP seed for a new user.
    pub async fn new_user_secrets(
        &self,
        name: &str,
        password: String,
    ) -> Result<NewUserSecrets, SecretsError> {
        check_password_policy(&password).map_err(SecretsError::Weak)?;
        let password_hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| SecretsError::Internal(e.into()))?
            .map_err(|e| SecretsError::Internal(anyhow!("hashing the password: {e}")))?;
        let totp = TotpSecret::generate()
            .map_err(|_| SecretsError::Internal(anyhow!("random source failed")))?;
        let totp_sealed = self
            .secret_box
            .seal(totp.as_bytes(), &totp_aad(name))
            .map_err(|e| SecretsError::Internal(anyhow!("sealing the TOTP secret: {e}")))?;
        Ok(NewUserSecrets {
            password_hash,
            totp_sealed,
            totp_uri: totp.otpauth_uri(TOTP_ISSUER, name),
        })
    }

    /// Checks a login. On success returns the TOTP step that matched (the
    /// caller consumes it in the enrollment transaction, so a code works
    /// once) and must then call [`Identity::succeeded`]. Every failure costs
    /// one argon2id verification and three TOTP computations, whether the
    /// user exists or not.
    pub async fn check(
        &self,
        name: &str,
        user: Option<&UserRecord>,
        password: String,
        code: String,
        source: IpAddr,
    ) -> Result<u64, LoginError> {
        let now = Instant::now();
        self.limiter
            .check(name, source, now)
            .map_err(LoginError::RateLimited)?;
        let stored_hash = user.map(|u| u.password_hash.clone());
        let secret = match user {
            Some(u) => match self.secret_box.open(&u.totp_sealed, &totp_aad(&u.name)) {
                Ok(bytes) => Arc::new(TotpSecret::from_bytes(bytes)),
                Err(e) => {
                    tracing::error!(user = %u.name, error = %e, "cannot open the stored TOTP secret; is secrets.key the one this database was made with?");
                    Arc::clone(&self.decoy)
                }
            },
            None => Arc::clone(&self.decoy),
        };
        let last_step = user
            .and_then(|u| u.totp_last_step)
            .and_then(|s| u64::try_from(s).ok());
        let unix = u64::try_from(unix_now()).unwrap_or(0);
        let (password_ok, step) = tokio::task::spawn_blocking(move || {
            let password_ok = verify_password(&password, stored_hash.as_deref());
            let step = secret.verify(&code, unix, last_step);
            (password_ok, step)
        })
        .await
        .map_err(|_| LoginError::Failed)?;
        let enabled = user.is_some_and(|u| !u.disabled);
        match step {
            Some(step) if password_ok && enabled => Ok(step),
            _ => {
                self.failed(name, source);
                Err(LoginError::Failed)
            }
        }
    }

    /// Counts a failure that happened after [`Identity::check`] passed (the
    /// code was replayed concurrently).
    pub fn failed(&self, name: &str, source: IpAddr) {
        self.limiter.record_failure(name, source, Instant::now());
    }

    /// Clears the user's failure count after a completed login.
    pub fn succeeded(&self, name: &str, source: IpAddr) {
        self.limiter.record_success(name, source);
    }
}

fn totp_aad(user_name: &str) -> Vec<u8> {
    format!("ztmesh totp v1 {user_name}").into_bytes()
}

/// User names: 1-128 characters of letters, digits and `@ . _ - +`.
pub fn validate_user_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'_' | b'-' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "user name `{}` is not valid: use 1-128 letters, digits and @ . _ - + (for example alice@example.com)",
            name.chars().take(130).collect::<String>()
        )))
    }
}

/// Group names: 1-63 characters of letters, digits, `-` and `_`.
pub fn validate_group(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "group name `{}` is not valid: use 1-63 letters, digits, '-' and '_'",
            name.chars().take(65).collect::<String>()
        )))
    }
}
