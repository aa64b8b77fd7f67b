//! `ztmesh server` and `ztmesh server init`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ztmesh_server::{InitOutcome, ServerConfig};

/// `ztmesh server` arguments.
#[derive(Args)]
pub struct ServerArgs {
    #[command(subcommand)]
    command: Option<ServerCommand>,
    /// Data directory (CA, server certificate, SQLite database).
    #[arg(long, global = true, default_value = "/var/lib/ztmesh-server")]
    data_dir: PathBuf,
    /// Database URL: postgres://USER:PASSWORD@HOST:PORT/DB (default: SQLite in the data directory).
    #[arg(
        long,
        global = true,
        env = "ZTMESH_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Address to listen on (TLS only).
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: SocketAddr,
    /// URL devices use to reach this server, put into join tokens (default: from --listen).
    #[arg(long)]
    advertise_url: Option<String>,
    /// Overlay IPv4 range devices get addresses from.
    #[arg(long, default_value = "100.64.0.0/10")]
    overlay_cidr: ipnet::Ipv4Net,
    /// Prometheus metrics at http://ADDRESS/metrics (plain HTTP: keep it local), or `off`.
    #[arg(long, default_value = "127.0.0.1:9464", value_parser = parse_metrics_listen)]
    metrics_listen: MetricsListen,
    /// Answer STUN Binding requests (RFC 8489) on this UDP address, so daemons learn their public address; or `off`.
    #[arg(long, default_value = "0.0.0.0:3478", value_parser = parse_metrics_listen)]
    stun_listen: MetricsListen,
    /// The built-in relay for devices without a direct path (TLS over TCP, and UDP, both on this address; devices prove themselves with their certificate); or `off`.
    #[arg(long, default_value = "0.0.0.0:443", value_parser = parse_metrics_listen)]
    relay_listen: MetricsListen,
    /// HOST:PORT of a `ztmesh relay` to hand to devices instead of the built-in relay.
    #[arg(long)]
    relay_advertise: Option<String>,
}

/// `ztmesh relay` arguments: the relay alone, over the server's data
/// directory (CA and certificate) and database.
#[derive(Args)]
pub struct RelayArgs {
    /// The coordination server's data directory (CA and server certificate; SQLite database by default).
    #[arg(long, default_value = "/var/lib/ztmesh-server")]
    data_dir: PathBuf,
    /// The coordination server's database URL (default: SQLite in the data directory).
    #[arg(long, env = "ZTMESH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Address to listen on: TCP (TLS) and UDP, same port.
    #[arg(long, default_value = "0.0.0.0:443")]
    listen: SocketAddr,
}

/// Runs `ztmesh relay`.
pub async fn run_relay(args: RelayArgs) -> Result<()> {
    let mut config = ServerConfig::new(args.data_dir);
    config.database_url = args.database_url;
    if !ztmesh_server::is_initialised(&config.data_dir) {
        anyhow::bail!(
            "{} is not an initialised server data directory: the relay uses the server's CA, certificate and database; run `ztmesh server init` first, or point --data-dir at the server's",
            config.data_dir.display()
        );
    }
    let mut shutdown = crate::shutdown_signal();
    ztmesh_server::run_relay(&config, args.listen, async move {
        let _ = shutdown.changed().await;
    })
    .await
}

/// `--metrics-listen` / `--stun-listen`: an address, or off.
pub type MetricsListen = Option<SocketAddr>;

/// Parses `--metrics-listen` and `--stun-listen`: `HOST:PORT` or `off`.
pub fn parse_metrics_listen(text: &str) -> Result<MetricsListen, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        format!("`{text}` is not an address; write HOST:PORT such as 127.0.0.1:9464, or off")
    })
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Create the database, CA and server certificate; print the bootstrap admin key once.
    Init {
        /// Extra name or IP address for the server certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// Output format of read commands.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON document, for scripts.
    Json,
}

/// Runs `ztmesh server [init]`.
pub async fn run(args: ServerArgs) -> Result<()> {
    let config = ServerConfig {
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        advertise_url: args.advertise_url.clone(),
        overlay_v4: args.overlay_cidr.trunc(),
        metrics_listen: args.metrics_listen,
        stun_listen: args.stun_listen,
        relay_listen: args.relay_listen,
        relay_advertise: args.relay_advertise.clone(),
    };
    if let Some(ServerCommand::Init { sans, output }) = args.command {
        let outcome = ztmesh_server::init(&config, &sans).await?;
        print_init(&config, &outcome, output, None);
        return Ok(());
    }
    if let Some(url) = &config.advertise_url
        && !url.starts_with("https://")
    {
        anyhow::bail!("--advertise-url must be an https:// URL (the server speaks TLS only)");
    }
    if !ztmesh_server::is_initialised(&config.data_dir) {
        // The certificate must name what devices will dial.
        let mut sans = Vec::new();
        if !args.listen.ip().is_unspecified() {
            sans.push(args.listen.ip().to_string());
        }
        if let Some(url) = &config.advertise_url {
            sans.push(ztmesh_agent::tls::host_port(url)?.0);
        }
        let outcome = ztmesh_server::init(&config, &sans).await?;
        print_init(&config, &outcome, Output::Text, Some(args.listen));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}; is the port in use?", args.listen))?;
    let mut shutdown = crate::shutdown_signal();
    ztmesh_server::run(config, listener, async move {
        let _ = shutdown.changed().await;
    })
    .await
}

fn print_init(
    config: &ServerConfig,
    outcome: &InitOutcome,
    output: Output,
    listen: Option<SocketAddr>,
) {
    if output == Output::Json {
        let json = serde_json::json!({
            "admin_key": outcome.admin_key,
            "ca_fingerprint": outcome.ca_fingerprint,
            "ca_cert": outcome.ca_cert_pem,
        });
        println!("{json}");
        return;
    }
    let ca_path = config.data_dir.join("ca.pem");
    let url = listen.map_or_else(
        || "https://SERVER:7443".to_owned(),
        ztmesh_server::default_advertise_url,
    );
    println!("ztmesh server initialised in {}", config.data_dir.display());
    println!("CA fingerprint (SHA-256): {}", outcome.ca_fingerprint);
    println!("Admin API key (shown only now; the server keeps only its hash):");
    println!("  {}", outcome.admin_key);
    println!("Use it with:");
    println!(
        "  export ZTMESH_SERVER={url} ZTMESH_CA_CERT={} ZTMESH_API_KEY=<the key above>",
        ca_path.display()
    );
}
