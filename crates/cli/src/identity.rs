//! `ztmesh admin users|groups|settings` and the device trust commands
//! (`devices approve|show|expire|set-expiry`).

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use ztmesh_proto::v1;

use crate::admin::{Client, status_error};
use crate::server::Output;

/// `ztmesh admin users ...`
#[derive(Subcommand)]
pub enum UsersCommand {
    /// Create a user; prints the TOTP enrollment URI and QR code (shown once).
    Create {
        /// Login name, e.g. alice@example.com.
        name: String,
        /// Directory group (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Read the initial password from the first line of stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Disable a user: their devices leave every peer list at once.
    Disable {
        /// User name.
        name: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// User name.
        name: String,
    },
    /// Delete a user and revoke all their devices.
    Delete {
        /// User name.
        name: String,
    },
}

/// `ztmesh admin groups ...`
#[derive(Subcommand)]
pub enum GroupsCommand {
    /// List directory groups and their members.
    List,
    /// Add a user to a group.
    Add {
        /// Group name.
        group: String,
        /// User name.
        user: String,
    },
    /// Remove a user from a group.
    Remove {
        /// Group name.
        group: String,
        /// User name.
        user: String,
    },
}

/// `ztmesh admin settings ...`
#[derive(Subcommand)]
pub enum SettingsCommand {
    /// Show the network settings.
    Show,
    /// Change a setting: `device-approval on|off`, `key-expiry DURATION` (e.g. 90d).
    Set {
        /// `device-approval` or `key-expiry`.
        name: String,
        /// New value.
        value: String,
    },
}

/// Device trust subcommands of `ztmesh admin devices`.
pub enum DeviceTrust {
    /// Approve.
    Approve(String),
    /// Show with posture and checks.
    Show(String, Output),
    /// Expire the node key now.
    Expire(String),
    /// Set the node key lifetime.
    SetExpiry(String, String),
}

pub async fn users(client: &Client, command: UsersCommand) -> Result<()> {
    match command {
        UsersCommand::Create {
            name,
            groups,
            password_stdin,
        } => {
            let password = if password_stdin {
                read_stdin_line("password")?
            } else {
                String::new()
            };
            let response = client
                .admin()
                .create_user(client.request(v1::CreateUserRequest {
                    name,
                    groups,
                    password,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            let user = response
                .user
                .ok_or_else(|| anyhow!("the server returned no user"))?;
            println!(
                "user {} created (groups: {})",
                user.name,
                user.groups.join(",")
            );
            if !response.generated_password.is_empty() {
                println!(
                    "initial password (shown once): {}",
                    response.generated_password
                );
            }
            println!("TOTP enrollment URI (shown once; add it to an authenticator app):");
            println!("{}", response.totp_uri);
            match qr(&response.totp_uri) {
                Ok(code) => println!("{code}"),
                Err(e) => eprintln!("(cannot draw the QR code: {e}; use the URI above)"),
            }
        }
        UsersCommand::List { output } => {
            let users = client
                .admin()
                .list_users(client.request(v1::ListUsersRequest {}))
                .await
                .map_err(status_error)?
                .into_inner()
                .users;
            if output == Output::Json {
                let list: Vec<_> = users
                    .iter()
                    .map(|u| {
                        serde_json::json!({"name": u.name, "groups": u.groups, "disabled": u.disabled, "devices": u.devices, "created_at": u.created_at})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<32} {:<9} {:<8} GROUPS", "NAME", "STATUS", "DEVICES");
                for u in users {
                    let status = if u.disabled { "disabled" } else { "active" };
                    println!(
                        "{:<32} {:<9} {:<8} {}",
                        u.name,
                        status,
                        u.devices,
                        u.groups.join(",")
                    );
                }
            }
        }
        UsersCommand::Disable { name } => set_disabled(client, name, true).await?,
        UsersCommand::Enable { name } => set_disabled(client, name, false).await?,
        UsersCommand::Delete { name } => {
            let response = client
                .admin()
                .delete_user(client.request(v1::DeleteUserRequest { name: name.clone() }))
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "user {name} deleted; {} devices revoked",
                response.devices_revoked
            );
        }
    }
    Ok(())
}

async fn set_disabled(client: &Client, name: String, disabled: bool) -> Result<()> {
    let user = client
        .admin()
        .set_user_disabled(client.request(v1::SetUserDisabledRequest { name, disabled }))
        .await
        .map_err(status_error)?
        .into_inner();
    let what = if disabled {
        "disabled; their devices were cut off"
    } else {
        "enabled"
    };
    println!("user {} {what}", user.name);
    Ok(())
}

pub async fn groups(client: &Client, command: GroupsCommand) -> Result<()> {
    let (group, user, member) = match command {
        GroupsCommand::List => {
            let groups = client
                .admin()
                .list_groups(client.request(v1::ListGroupsRequest {}))
                .await
                .map_err(status_error)?
                .into_inner()
                .groups;
            println!("{:<24} MEMBERS", "GROUP");
            for g in groups {
                println!("{:<24} {}", g.name, g.members.join(","));
            }
            return Ok(());
        }
        GroupsCommand::Add { group, user } => (group, user, true),
        GroupsCommand::Remove { group, user } => (group, user, false),
    };
    let updated = client
        .admin()
        .set_group_member(client.request(v1::SetGroupMemberRequest {
            group: group.clone(),
            user,
            member,
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "user {} is now in groups: {}",
        updated.name,
        updated.groups.join(",")
    );
    Ok(())
}

pub async fn settings(client: &Client, command: SettingsCommand) -> Result<()> {
    let settings = match command {
        SettingsCommand::Show => client
            .admin()
            .get_settings(client.request(v1::GetSettingsRequest {}))
            .await
            .map_err(status_error)?
            .into_inner(),
        SettingsCommand::Set { name, value } => {
            let mut update = v1::UpdateSettingsRequest::default();
            match name.as_str() {
                "device-approval" => {
                    update.device_approval = Some(match value.as_str() {
                        "on" | "true" => true,
                        "off" | "false" => false,
                        other => bail!("device-approval takes `on` or `off`, not `{other}`"),
                    });
                }
                "key-expiry" => {
                    let lifetime = humantime::parse_duration(&value).map_err(|e| {
                        anyhow!(
                            "key-expiry `{value}` is not a duration ({e}); write e.g. 90d or 12h"
                        )
                    })?;
                    update.key_expiry_seconds = Some(lifetime.as_secs());
                }
                other => {
                    bail!("unknown setting `{other}`; settings are device-approval and key-expiry")
                }
            }
            client
                .admin()
                .update_settings(client.request(update))
                .await
                .map_err(status_error)?
                .into_inner()
        }
    };
    println!(
        "device-approval {}",
        if settings.device_approval {
            "on"
        } else {
            "off"
        }
    );
    println!(
        "key-expiry      {}",
        humantime::format_duration(Duration::from_secs(settings.key_expiry_seconds))
    );
    Ok(())
}

pub async fn device_trust(client: &Client, command: DeviceTrust) -> Result<()> {
    let device = match command {
        DeviceTrust::Approve(device) => client
            .admin()
            .approve_device(client.request(v1::DeviceRef { device }))
            .await
            .map_err(status_error)?
            .into_inner(),
        DeviceTrust::Expire(device) => client
            .admin()
            .expire_device(client.request(v1::DeviceRef { device }))
            .await
            .map_err(status_error)?
            .into_inner(),
        DeviceTrust::SetExpiry(device, value) => {
            let mut request = v1::SetDeviceExpiryRequest {
                device,
                ..Default::default()
            };
            match value.as_str() {
                "never" => request.never = true,
                "default" => request.network_default = true,
                _ => {
                    request.seconds = humantime::parse_duration(&value)
                        .map_err(|e| anyhow!("`{value}` is not a duration ({e}); write e.g. 30d, `never` or `default`"))?
                        .as_secs();
                }
            }
            client
                .admin()
                .set_device_expiry(client.request(request))
                .await
                .map_err(status_error)?
                .into_inner()
        }
        DeviceTrust::Show(device, output) => {
            let detail = client
                .admin()
                .show_device(client.request(v1::DeviceRef { device }))
                .await
                .map_err(status_error)?
                .into_inner();
            return print_detail(&detail, output);
        }
    };
    println!(
        "device {}: status {}, key expires {}",
        device.name,
        device.status,
        expiry_text(device.key_expires_at)
    );
    Ok(())
}

pub(crate) fn expiry_text(at: i64) -> String {
    if at == 0 {
        return "never".to_owned();
    }
    let Ok(secs) = u64::try_from(at) else {
        return at.to_string();
    };
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn print_detail(detail: &v1::DeviceDetail, output: Output) -> Result<()> {
    let device = detail
        .device
        .as_ref()
        .ok_or_else(|| anyhow!("the server returned no device"))?;
    let checks: Vec<_> = detail
        .checks
        .iter()
        .map(|c| serde_json::json!({"segment": c.segment, "posture": c.posture, "check": c.check, "passed": c.passed, "detail": c.detail}))
        .collect();
    let posture = detail.posture.as_ref().map(|p| {
        serde_json::json!({
            "os": p.os, "os_version": p.os_version, "os_name": p.os_name, "kernel": p.kernel,
            "daemon_version": p.daemon_version, "hostname": p.hostname,
            "disk_encrypted": p.disk_encrypted, "firewall": p.firewall,
            "public_ip": p.public_ip, "reported_at": p.reported_at,
        })
    });
    if output == Output::Json {
        let json = serde_json::json!({
            "name": device.name, "id": device.id, "status": device.status, "online": device.online,
            "user": device.user, "tags": device.tags, "addresses": device.addresses,
            "approved": device.approved, "key_expires_at": device.key_expires_at,
            "segments": detail.segments, "posture": posture, "checks": checks,
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!("name        {}", device.name);
    println!(
        "status      {}{}",
        device.status,
        if device.online { " (online)" } else { "" }
    );
    if device.user.is_empty() {
        println!("owner       tags {}", device.tags.join(","));
    } else {
        println!("owner       user {}", device.user);
    }
    println!("addresses   {}", device.addresses.join(","));
    println!("key expires {}", expiry_text(device.key_expires_at));
    println!("segments    {}", detail.segments.join(","));
    match &detail.posture {
        None => println!("posture     never reported"),
        Some(p) => {
            let tri = |v: Option<bool>| v.map_or("unknown", |b| if b { "yes" } else { "no" });
            println!(
                "posture     {} {} ({}), kernel {}, daemon {}, host {}",
                p.os, p.os_version, p.os_name, p.kernel, p.daemon_version, p.hostname
            );
            println!(
                "            disk encrypted {}, firewall {}, public address {}",
                tri(p.disk_encrypted),
                tri(p.firewall),
                p.public_ip
            );
        }
    }
    if detail.checks.is_empty() {
        println!("checks      none (no segment it belongs to requires posture)");
    }
    for c in &detail.checks {
        println!(
            "check       {:<4} {}/{}/{}: {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.segment,
            c.posture,
            c.check,
            c.detail
        );
    }
    Ok(())
}

/// The first line of stdin, trimmed of its line end.
pub fn read_stdin_line(what: &str) -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| anyhow!("reading the {what} from stdin: {e}"))?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        bail!("no {what} on stdin");
    }
    Ok(line)
}

/// The URI as a QR code drawn with Unicode half blocks.
fn qr(text: &str) -> Result<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| anyhow!("{e}"))?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}
