//! Helpers for the end-to-end tests: a coordination server and daemons in
//! one process, on loopback, with in-memory TUN devices.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod packets;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::watch;
use tonic::Request;
use tonic::transport::Channel;
use ztmesh_agent::PostureOptions;
use ztmesh_agent::dataplane::Io;
use ztmesh_agent::posture::PostureReport;
use ztmesh_agent::state::{Enrollment, StateDir};
use ztmesh_agent::status::Status;
use ztmesh_agent::tunio::{ChannelTun, ChannelTunHandle};
use ztmesh_proto::v1;
use ztmesh_rpc::v1::admin_client::AdminClient;
use ztmesh_server::ServerConfig;
pub use ztmesh_server::auth::totp::TotpSecret;

/// A private temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ztmesh-e2e-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running coordination server with an admin client.
pub struct TestServer {
    pub dir: TempDir,
    pub url: String,
    pub ca_pem: String,
    pub ca_fingerprint: String,
    admin_key: String,
    config: ServerConfig,
    addr: SocketAddr,
    channel: Channel,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl TestServer {
    /// Initialises and starts a server on 127.0.0.1 (SQLite in its data dir,
    /// or `database_url` when given).
    pub async fn start(database_url: Option<String>) -> TestServer {
        Self::start_with(database_url, |_| {}).await
    }

    /// [`TestServer::start`] with more settings (metrics, STUN, ...).
    pub async fn start_with(
        database_url: Option<String>,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let dir = TempDir::new("server");
        let mut config = ServerConfig::new(dir.0.join("data"));
        config.database_url = database_url;
        configure(&mut config);
        let outcome = ztmesh_server::init(&config, &[]).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("https://{addr}");
        config.advertise_url = Some(url.clone());
        let (stop, task) = spawn_server(config.clone(), listener);
        let channel = ztmesh_agent::tls::channel(&url, &outcome.ca_cert_pem, None)
            .await
            .unwrap();
        TestServer {
            dir,
            url,
            ca_pem: outcome.ca_cert_pem,
            ca_fingerprint: outcome.ca_fingerprint,
            admin_key: outcome.admin_key,
            config,
            addr,
            channel,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.halt().await;
    }

    /// Starts the stopped server again on the same address and data.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        let (stop, task) = spawn_server(self.config.clone(), listener);
        self.stop = Some(stop);
        self.task = task;
    }

    /// Stops the server, keeping this handle for [`TestServer::restart`].
    pub async fn halt(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }

    /// The owner API key (for the secrets test).
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// A request carrying the owner API key.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.admin_key).parse().unwrap(),
        );
        request
    }

    pub fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel.clone())
    }

    /// The TLS channel to the server (for generic gRPC clients).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A request carrying `api_key` instead of the owner key.
    pub fn request_as<T>(&self, api_key: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {api_key}").parse().unwrap(),
        );
        request
    }

    /// Creates an API key with `role` using `creator`'s key; returns the
    /// whole secret.
    pub async fn api_key_as(
        &self,
        creator: &str,
        role: &str,
        expires_in_seconds: u64,
    ) -> Result<String, tonic::Status> {
        self.admin()
            .create_api_key(self.request_as(
                creator,
                v1::CreateApiKeyRequest {
                    role: role.into(),
                    expires_in_seconds,
                    description: format!("test {role} key"),
                },
            ))
            .await
            .map(|r| r.into_inner().secret)
    }

    pub async fn token(&self, tags: &[&str], reusable: bool, expires_in_seconds: u64) -> String {
        self.admin()
            .create_join_token(self.request(v1::CreateJoinTokenRequest {
                reusable,
                expires_in_seconds,
                tags: tags.iter().map(|t| t.to_string()).collect(),
                pre_approved: false,
            }))
            .await
            .unwrap()
            .into_inner()
            .token
    }

    pub async fn set_policy(&self, text: &str) -> Result<u64, tonic::Status> {
        self.admin()
            .set_policy(self.request(v1::SetPolicyRequest {
                text: text.into(),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner().version)
    }

    pub async fn revoke(&self, name: &str) -> Result<(), tonic::Status> {
        self.admin()
            .revoke_device(self.request(v1::RevokeDeviceRequest {
                device: name.into(),
            }))
            .await
            .map(|_| ())
    }

    /// Creates a user; returns its TOTP secret (decoded from the URI).
    pub async fn create_user(&self, name: &str, groups: &[&str], password: &str) -> TotpSecret {
        let response = self
            .admin()
            .create_user(self.request(v1::CreateUserRequest {
                name: name.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                password: password.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        totp_from_uri(&response.totp_uri)
    }

    /// Changes the network settings.
    pub async fn settings(&self, device_approval: Option<bool>, key_expiry_seconds: Option<u64>) {
        self.admin()
            .update_settings(self.request(v1::UpdateSettingsRequest {
                device_approval,
                key_expiry_seconds,
            }))
            .await
            .unwrap();
    }

    /// One device as the admin API shows it.
    pub async fn device(&self, name: &str) -> v1::Device {
        self.devices()
            .await
            .into_iter()
            .find(|d| d.name == name)
            .unwrap_or_else(|| panic!("no device {name}"))
    }

    /// `ztmesh admin devices show`.
    pub async fn show(&self, name: &str) -> v1::DeviceDetail {
        self.admin()
            .show_device(self.request(v1::DeviceRef {
                device: name.into(),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn devices(&self) -> Vec<v1::Device> {
        self.admin()
            .list_devices(self.request(v1::ListDevicesRequest {}))
            .await
            .unwrap()
            .into_inner()
            .devices
    }
}

type ServerTask = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<()>>,
);

fn spawn_server(config: ServerConfig, listener: tokio::net::TcpListener) -> ServerTask {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ztmesh_server::run(config, listener, async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// The TOTP secret inside an `otpauth://` URI.
pub fn totp_from_uri(uri: &str) -> TotpSecret {
    let secret = uri
        .split(['?', '&'])
        .find_map(|part| part.strip_prefix("secret="))
        .expect("secret in the otpauth URI");
    TotpSecret::from_base32(secret).unwrap()
}

/// The current TOTP code of `secret`.
pub fn totp_now(secret: &TotpSecret) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("{:06}", secret.code_at(now))
}

/// A posture probe the test controls.
#[derive(Clone)]
pub struct FakePosture(pub Arc<Mutex<PostureReport>>);

impl FakePosture {
    /// A compliant Linux laptop with an encrypted disk and a firewall.
    pub fn compliant() -> FakePosture {
        FakePosture(Arc::new(Mutex::new(PostureReport {
            os: "linux".into(),
            os_version: "12".into(),
            os_name: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: "6.1.0-test".into(),
            daemon_version: ztmesh_agent::VERSION.into(),
            hostname: "test-host".into(),
            disk_encrypted: Some(true),
            firewall: Some(true),
        })))
    }

    pub fn set(&self, change: impl FnOnce(&mut PostureReport)) {
        change(&mut self.0.lock().unwrap());
    }

    /// Options that read this probe every 100 ms.
    pub fn options(&self) -> PostureOptions {
        let shared = Arc::clone(&self.0);
        PostureOptions {
            source: Arc::new(move || shared.lock().unwrap().clone()),
            interval: Duration::from_millis(100),
        }
    }
}

/// A daemon running in this process with an in-memory TUN.
pub struct TestAgent {
    pub name: String,
    pub address: Ipv4Addr,
    pub state: StateDir,
    pub tun: ChannelTunHandle,
    _dir: TempDir,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl TestAgent {
    /// Enrolls with `token` and starts the daemon.
    pub async fn join(token: &str, name: &str) -> Result<TestAgent> {
        Self::join_with(token, name, FakePosture::compliant()).await
    }

    /// Enrolls with `token` and starts the daemon with a posture probe.
    pub async fn join_with(token: &str, name: &str, posture: FakePosture) -> Result<TestAgent> {
        let dir = TempDir::new(name);
        let state = StateDir::open(dir.0.join("state"))?;
        let enrollment = ztmesh_agent::ensure_enrolled(&state, Some(token), Some(name)).await?;
        Self::start(dir, state, enrollment, name, posture).await
    }

    /// Logs in as `user` (password and current TOTP code) and starts the daemon.
    pub async fn login(
        server: &TestServer,
        user: &str,
        password: &str,
        code: &str,
        name: &str,
        posture: FakePosture,
    ) -> Result<TestAgent> {
        let dir = TempDir::new(name);
        let state = StateDir::open(dir.0.join("state"))?;
        let enrollment = ztmesh_agent::login::login(
            &state,
            ztmesh_agent::login::LoginRequest {
                server_url: server.url.clone(),
                ca_fingerprint: server.ca_fingerprint.clone(),
                user: user.into(),
                password: password.into(),
                totp_code: code.into(),
                device_name: name.into(),
                force: false,
            },
        )
        .await?;
        Self::start(dir, state, enrollment, name, posture).await
    }

    async fn start(
        dir: TempDir,
        state: StateDir,
        enrollment: Enrollment,
        name: &str,
        posture: FakePosture,
    ) -> Result<TestAgent> {
        let address = address_of(&enrollment)?;
        let (tun, handle) = ChannelTun::pair();
        let udp = ztmesh_agent::bind_udp(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let (stop, stopped) = watch::channel(false);
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            ztmesh_agent::run_with(
                &task_state,
                &enrollment,
                Io {
                    tun,
                    udp,
                    peer_sockets: true,
                },
                posture.options(),
                stopped,
            )
            .await
        });
        // Like `ztmesh up`, the daemon is up once its status socket
        // answers; a daemon that stopped first hands back its error.
        let deadline = Instant::now() + Duration::from_secs(10);
        while ztmesh_agent::status::query(&state.socket_path())
            .await
            .is_err()
        {
            if task.is_finished() {
                return Err(task
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|result| result)
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("{name}: the daemon stopped at once")));
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name}: the daemon's status socket did not answer within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(TestAgent {
            name: name.into(),
            address,
            state,
            tun: handle,
            _dir: dir,
            stop,
            task,
        })
    }

    pub async fn status(&self) -> Status {
        ztmesh_agent::status::query(&self.state.socket_path())
            .await
            .unwrap()
    }

    /// Waits until `check` holds for this agent's status; returns how long it took.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Status) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let status = self.status().await;
            if check(&status) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "{}: `{what}` did not hold within {timeout:?}; status: {status:#?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Injects a packet as if a local application sent it.
    pub async fn send(&self, packet: Vec<u8>) {
        self.tun.to_dataplane.send(packet).await.unwrap();
    }

    /// The next packet delivered to local applications, if one comes within `timeout`.
    pub async fn receive(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(timeout, self.tun.from_dataplane.recv())
            .await
            .ok()
            .flatten()
    }

    /// Drops everything already delivered.
    pub fn drain(&mut self) {
        while self.tun.from_dataplane.try_recv().is_ok() {}
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

fn address_of(enrollment: &Enrollment) -> Result<Ipv4Addr> {
    let first = enrollment.addresses.first().context("no address")?;
    Ok(first.split('/').next().unwrap_or_default().parse()?)
}

/// Creates a new, empty PostgreSQL database next to the one `base_url`
/// names and returns its URL.
pub async fn fresh_postgres_database(base_url: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let (prefix, _) = base_url.rsplit_once('/').expect("database URL with a path");
    let name = format!(
        "ztmesh_e2e_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    ztmesh_server::store::create_database(base_url, &name)
        .await
        .unwrap();
    format!("{prefix}/{name}")
}

/// A free local TCP port (bound and released; fine for tests).
pub fn free_local_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// `GET /metrics` from `addr`; the body.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// A free local UDP port (bound and released; fine for tests).
pub fn free_udp_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
}
