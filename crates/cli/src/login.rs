//! `ztmesh login`: enroll this device as a user's device.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use ztmesh_agent::login::LoginRequest;
use ztmesh_agent::state::StateDir;

use crate::identity::read_stdin_line;

/// `ztmesh login` arguments. Without a terminal, the password and then the
/// code are read from the first two lines of stdin.
#[derive(clap::Args)]
pub struct LoginArgs {
    /// Server URL (https://HOST:PORT).
    #[arg(long, env = "ZTMESH_SERVER")]
    server: String,
    /// SHA-256 fingerprint of the server's CA, as printed by `ztmesh server init`
    /// and `ztmesh admin users create`.
    #[arg(long, env = "ZTMESH_CA_FINGERPRINT")]
    ca_fingerprint: String,
    /// User name (asked for when not given).
    #[arg(long)]
    user: Option<String>,
    /// Device name to register (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// State directory for keys and certificates (mode 0700).
    #[arg(long, default_value = "/var/lib/ztmesh")]
    state_dir: PathBuf,
    /// Replace an existing enrollment in the state directory.
    #[arg(long)]
    force: bool,
}

/// Runs `ztmesh login`.
pub async fn run(args: LoginArgs) -> Result<()> {
    let state = StateDir::open(&args.state_dir)?;
    let interactive = std::io::stdin().is_terminal();
    let user = match args.user {
        Some(user) => user,
        None if interactive => prompt("user: ")?,
        None => return Err(anyhow!("pass --user when stdin is not a terminal")),
    };
    let (password, code) = if interactive {
        let password = rpassword::prompt_password("password: ").context("reading the password")?;
        let code = prompt("TOTP code: ")?;
        (password, code)
    } else {
        (read_stdin_line("password")?, read_stdin_line("TOTP code")?)
    };
    let enrollment = ztmesh_agent::login::login(
        &state,
        LoginRequest {
            server_url: args.server,
            ca_fingerprint: args.ca_fingerprint,
            user,
            password,
            totp_code: code,
            device_name: args.name.unwrap_or_else(ztmesh_agent::enroll::default_name),
            force: args.force,
        },
    )
    .await?;
    println!(
        "logged in: this device is {} ({}); start it with `ztmesh up --state-dir {}`",
        enrollment.name,
        enrollment.addresses.join(","),
        args.state_dir.display()
    );
    Ok(())
}

fn prompt(label: &str) -> Result<String> {
    eprint!("{label}");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading from the terminal")?;
    Ok(line.trim().to_owned())
}
