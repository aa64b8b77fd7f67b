//! `ztmesh`: the one binary. Thin glue over `ztmesh-server` and `ztmesh-agent`.

mod admin;
mod api_keys;
mod audit;
mod identity;
mod import;
mod limits;
mod login;
mod observe;
mod policy;
mod server;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ztmesh: a zero trust network overlay on userspace WireGuard.
#[derive(Parser)]
#[command(name = "ztmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordination server (initialising its data directory the first time).
    Server(server::ServerArgs),
    /// Manage the network through the admin API.
    Admin(admin::AdminArgs),
    /// Enroll this device (first time) and run the daemon in the foreground.
    Up(UpArgs),
    /// Enroll this device as your own: user name, password and TOTP code.
    Login(login::LoginArgs),
    /// Show the local daemon's node, peers and drop counters.
    Status(status::StatusArgs),
    /// Run a relay on its own, over the coordination server's data directory and database.
    Relay(server::RelayArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    /// Join token from `ztmesh admin join-token create` (needed only the first time).
    #[arg(long, env = "ZTMESH_JOIN_TOKEN", hide_env_values = true)]
    join: Option<String>,
    /// Device name to request (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// State directory holding keys and certificates (mode 0700).
    #[arg(long, default_value = "/var/lib/ztmesh")]
    state_dir: PathBuf,
    /// Name of the TUN interface.
    #[arg(long, default_value = "ztmesh0")]
    tun: String,
    /// WireGuard UDP port.
    #[arg(long, default_value_t = 51820)]
    listen_port: u16,
    /// Prefix length of the overlay range routed into the TUN device (100.64.0.0/10 by default).
    #[arg(long, default_value_t = 10)]
    overlay_prefix: u8,
    /// Prometheus metrics at http://ADDRESS/metrics (plain HTTP: keep it local), or `off`.
    #[arg(long, default_value = "127.0.0.1:9465", value_parser = server::parse_metrics_listen)]
    metrics_listen: server::MetricsListen,
    /// Do not ask the kernel for TUN segmentation/receive offloads (TSO/GRO);
    /// every packet then costs its own read and write. For comparison and debugging.
    #[arg(long)]
    no_tun_offload: bool,
    /// Send and receive every peer's traffic on the one WireGuard socket, with
    /// no connected socket per peer endpoint (those save the kernel a route
    /// lookup on each packet both ways). For comparison and debugging.
    #[arg(long)]
    no_peer_sockets: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // The daemon's control side (gRPC, reports, status) needs one thread;
    // its data plane runs on a thread of its own with its own epoll
    // (ztmesh_agent::driver), so a packet wakes only that thread.
    let mut builder = if matches!(cli.command, Command::Up(_)) {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        // The posture probe runs on the runtime's blocking pool every
        // POSTURE_INTERVAL. With tokio's default keep-alive (10 s, the
        // same as the interval) its thread ended just before each probe,
        // and every probe started a new one (clone, its signal stack
        // mapped, its stack's pages faulted in, then unmapped): kept
        // alive longer, one parked thread serves every probe.
        builder.thread_keep_alive(ztmesh_agent::POSTURE_INTERVAL * 6);
        builder
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if matches!(
        cli.command,
        Command::Server(_) | Command::Up(_) | Command::Relay(_)
    ) {
        limits::raise_open_files();
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Admin(args) => admin::run(args).await,
            Command::Up(args) => up(args).await,
            Command::Login(args) => login::run(args).await,
            Command::Status(args) => status::run(args).await,
            Command::Relay(args) => server::run_relay(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.overlay_prefix > 32 {
        anyhow::bail!("--overlay-prefix must be between 0 and 32");
    }
    let options = ztmesh_agent::UpOptions {
        state_dir: args.state_dir,
        join: args.join,
        name: args.name,
        tun_name: args.tun,
        listen_port: args.listen_port,
        overlay_prefix: args.overlay_prefix,
        metrics_listen: args.metrics_listen,
        tun_offload: !args.no_tun_offload,
        peer_sockets: !args.no_peer_sockets,
    };
    ztmesh_agent::up(options, shutdown_signal()).await
}

/// A receiver that flips to `true` on Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = tx.send(true);
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    rx
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZTMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
