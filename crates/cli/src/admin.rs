//! `ztmesh admin ...`: the admin API from the command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use tonic::Request;
use tonic::transport::Channel;
use ztmesh_proto::v1;
use ztmesh_rpc::v1::admin_client::AdminClient;

use crate::api_keys::ApiKeysCommand;
use crate::audit::AuditArgs;
use crate::identity::{DeviceTrust, GroupsCommand, SettingsCommand, UsersCommand};
use crate::observe::{EventsArgs, FlowsArgs};
use crate::policy::PolicyCommand;
pub(crate) use crate::server::Output;

/// `ztmesh admin` arguments.
#[derive(Args)]
pub struct AdminArgs {
    /// Server URL (https://HOST:PORT).
    #[arg(long, global = true, env = "ZTMESH_SERVER")]
    server: Option<String>,
    /// Admin API key.
    #[arg(long, global = true, env = "ZTMESH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The server's CA certificate (ca.pem in the server's data directory).
    #[arg(long, global = true, env = "ZTMESH_CA_CERT")]
    ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Join tokens for enrolling devices.
    #[command(subcommand, name = "join-token")]
    JoinToken(JoinTokenCommand),
    /// Enrolled devices.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// The segment policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Users (password + TOTP) who log in on their laptops.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Directory groups of users, usable in policy segments.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Network settings: device approval, node key lifetime.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Admin API keys with roles (owner, admin, policy-editor, auditor).
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
    /// The audit log: who changed what, when, from where.
    Audit(AuditArgs),
    /// Flow records reported by daemons (accepted, monitored, dropped).
    Flows(FlowsArgs),
    /// Follow live events: devices connecting, posture, policy versions.
    Events(EventsArgs),
}

#[derive(Subcommand)]
enum JoinTokenCommand {
    /// Create a join token and print it alone on stdout.
    Create {
        /// Allow many enrollments (default: single use).
        #[arg(long)]
        reusable: bool,
        /// Lifetime, e.g. 30m, 12h, 7d (default 24h, at most 365d).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// Tag given to every device enrolled with it (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Devices enrolled with it need no admin approval.
        #[arg(long)]
        pre_approved: bool,
    },
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// List devices.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Revoke a device: it is removed from every peer and its stream is closed.
    Revoke {
        /// Device name or id.
        name: String,
    },
    /// Approve a device waiting for approval.
    Approve {
        /// Device name or id.
        name: String,
    },
    /// Show a device: posture, key expiry, segments and which posture checks pass or fail.
    Show {
        /// Device name or id.
        name: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Expire a device's node key now: it drops out until it re-authenticates.
    Expire {
        /// Device name or id.
        name: String,
    },
    /// Set a device's node key lifetime from now: a duration (30d), `never` (tagged devices only) or `default`.
    SetExpiry {
        /// Device name or id.
        name: String,
        /// Lifetime.
        lifetime: String,
    },
}

/// Runs an admin command.
pub async fn run(args: AdminArgs) -> Result<()> {
    // Local input is checked before anything is sent.
    if matches!(&args.command, AdminCommand::Policy(command) if command.is_local())
        && let AdminCommand::Policy(command) = args.command
    {
        return crate::policy::run_local(command);
    }
    let policy_text = match &args.command {
        AdminCommand::Policy(command) => command.local_text()?,
        _ => None,
    };
    let client = connect(&args).await?;
    match args.command {
        AdminCommand::JoinToken(JoinTokenCommand::Create {
            reusable,
            expires,
            tags,
            pre_approved,
        }) => {
            let response = client
                .admin()
                .create_join_token(client.request(v1::CreateJoinTokenRequest {
                    reusable,
                    expires_in_seconds: expires.map_or(0, |d| d.as_secs().max(1)),
                    tags,
                    pre_approved,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", response.token);
        }
        AdminCommand::Devices(DevicesCommand::List { output }) => {
            let devices = client
                .admin()
                .list_devices(client.request(v1::ListDevicesRequest {}))
                .await
                .map_err(status_error)?
                .into_inner()
                .devices;
            print_devices(&devices, output)?;
        }
        AdminCommand::Devices(DevicesCommand::Revoke { name }) => {
            let device = client
                .admin()
                .revoke_device(client.request(v1::RevokeDeviceRequest { device: name }))
                .await
                .map_err(status_error)?
                .into_inner()
                .device
                .ok_or_else(|| anyhow!("the server returned no device"))?;
            println!("device {} revoked", device.name);
        }
        AdminCommand::Devices(DevicesCommand::Approve { name }) => {
            crate::identity::device_trust(&client, DeviceTrust::Approve(name)).await?;
        }
        AdminCommand::Devices(DevicesCommand::Show { name, output }) => {
            crate::identity::device_trust(&client, DeviceTrust::Show(name, output)).await?;
        }
        AdminCommand::Devices(DevicesCommand::Expire { name }) => {
            crate::identity::device_trust(&client, DeviceTrust::Expire(name)).await?;
        }
        AdminCommand::Devices(DevicesCommand::SetExpiry { name, lifetime }) => {
            crate::identity::device_trust(&client, DeviceTrust::SetExpiry(name, lifetime)).await?;
        }
        AdminCommand::Users(command) => crate::identity::users(&client, command).await?,
        AdminCommand::Groups(command) => crate::identity::groups(&client, command).await?,
        AdminCommand::Settings(command) => crate::identity::settings(&client, command).await?,
        AdminCommand::ApiKeys(command) => crate::api_keys::run(&client, command).await?,
        AdminCommand::Audit(args) => crate::audit::run(&client, args).await?,
        AdminCommand::Policy(command) => crate::policy::run(&client, command, policy_text).await?,
        AdminCommand::Flows(args) => crate::observe::flows(&client, args).await?,
        AdminCommand::Events(args) => crate::observe::events(&client, args).await?,
    }
    Ok(())
}

pub(crate) struct Client {
    channel: Channel,
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Client {
    pub(crate) fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request
    }
}

async fn connect(args: &AdminArgs) -> Result<Client> {
    let server = args.server.as_deref().ok_or_else(|| {
        anyhow!("no server given: pass --server https://HOST:7443 or set ZTMESH_SERVER")
    })?;
    let api_key = args
        .api_key
        .as_deref()
        .ok_or_else(|| anyhow!("no API key given: pass --api-key or set ZTMESH_API_KEY (printed once by `ztmesh server init`)"))?;
    let ca_path = args
        .ca_cert
        .as_deref()
        .ok_or_else(|| anyhow!("no CA certificate given: pass --ca-cert or set ZTMESH_CA_CERT (ca.pem in the server's data directory)"))?;
    let ca = std::fs::read_to_string(ca_path)
        .with_context(|| format!("reading the CA certificate {}", ca_path.display()))?;
    if !ca.contains("BEGIN CERTIFICATE") {
        anyhow::bail!("{} is not a PEM certificate", ca_path.display());
    }
    let bearer = format!("Bearer {}", api_key.trim())
        .parse()
        .map_err(|_| anyhow!("the API key contains characters that cannot be sent"))?;
    let channel = ztmesh_agent::tls::channel(server, &ca, None).await?;
    Ok(Client { channel, bearer })
}

pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow!("{}", status.message())
}

fn print_devices(devices: &[v1::Device], output: Output) -> Result<()> {
    use base64::Engine;
    if output == Output::Json {
        let list: Vec<_> = devices
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.id,
                    "name": d.name,
                    "addresses": d.addresses,
                    "tags": d.tags,
                    "status": d.status,
                    "online": d.online,
                    "public_key": base64::engine::general_purpose::STANDARD.encode(&d.public_key),
                    "endpoints": d.endpoints,
                    "created_at": d.created_at,
                    "user": d.user,
                    "approved": d.approved,
                    "key_expires_at": d.key_expires_at,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<18} {:<24} {:<16} {:<7} ENDPOINT",
        "NAME", "ADDRESS", "OWNER", "STATUS", "ONLINE"
    );
    for d in devices {
        let owner = if d.user.is_empty() {
            format!("tag:{}", d.tags.join(","))
        } else {
            d.user.clone()
        };
        println!(
            "{:<20} {:<18} {:<24} {:<16} {:<7} {}",
            d.name,
            d.addresses.join(","),
            owner,
            d.status,
            if d.online { "yes" } else { "no" },
            d.endpoints.join(",")
        );
    }
    Ok(())
}
