//! `ztmesh admin api-keys ...`: create (the secret is printed once), list,
//! revoke.

use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Subcommand;
use ztmesh_proto::v1;

use crate::admin::{Client, status_error};
use crate::identity::expiry_text;
use crate::server::Output;

/// `ztmesh admin api-keys` subcommands.
#[derive(Subcommand)]
pub enum ApiKeysCommand {
    /// Create a key and print it alone on stdout (shown once; stored only as a hash).
    Create {
        /// What the key may do (see proto/ztmesh/v1/admin-roles.md).
        #[arg(long, value_parser = ["owner", "admin", "policy-editor", "auditor"])]
        role: String,
        /// Lifetime, e.g. 12h, 30d (default: never expires; at most 3650d).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// What the key is for, e.g. "CI policy deploys".
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List keys (ids, roles, expiry; never secrets).
    List {
        /// Also revoked and expired keys.
        #[arg(long)]
        all: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Revoke a key: every later call with it is refused.
    Revoke {
        /// Key id (the part between `ztk_` and the dot).
        id: String,
    },
}

/// Runs an `api-keys` subcommand.
pub async fn run(client: &Client, command: ApiKeysCommand) -> Result<()> {
    match command {
        ApiKeysCommand::Create {
            role,
            expires,
            description,
        } => {
            let response = client
                .admin()
                .create_api_key(client.request(v1::CreateApiKeyRequest {
                    role,
                    expires_in_seconds: expires.map_or(0, |d| d.as_secs().max(1)),
                    description,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            let key = response
                .key
                .ok_or_else(|| anyhow!("the server returned no key"))?;
            eprintln!(
                "API key {} (role {}) created, expires: {}; it is shown once:",
                key.id,
                key.role,
                expiry_text(key.expires_at)
            );
            println!("{}", response.secret);
        }
        ApiKeysCommand::List { all, output } => {
            let keys = client
                .admin()
                .list_api_keys(client.request(v1::ListApiKeysRequest { all }))
                .await
                .map_err(status_error)?
                .into_inner()
                .keys;
            print_keys(&keys, output)?;
        }
        ApiKeysCommand::Revoke { id } => {
            let key = client
                .admin()
                .revoke_api_key(client.request(v1::RevokeApiKeyRequest { id }))
                .await
                .map_err(status_error)?
                .into_inner()
                .key
                .ok_or_else(|| anyhow!("the server returned no key"))?;
            println!("API key {} ({}) revoked", key.id, key.role);
        }
    }
    Ok(())
}

fn print_keys(keys: &[v1::ApiKey], output: Output) -> Result<()> {
    if output == Output::Json {
        let list: Vec<_> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "id": k.id,
                    "role": k.role,
                    "description": k.description,
                    "created_at": k.created_at,
                    "created_by": k.created_by,
                    "expires_at": k.expires_at,
                    "revoked_at": k.revoked_at,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<10} {:<14} {:<21} {:<21} {:<18} DESCRIPTION",
        "ID", "ROLE", "EXPIRES", "REVOKED", "CREATED BY"
    );
    for k in keys {
        let revoked = if k.revoked_at == 0 {
            "-".to_owned()
        } else {
            expiry_text(k.revoked_at)
        };
        println!(
            "{:<10} {:<14} {:<21} {:<21} {:<18} {}",
            k.id,
            k.role,
            expiry_text(k.expires_at),
            revoked,
            k.created_by,
            k.description
        );
    }
    Ok(())
}
