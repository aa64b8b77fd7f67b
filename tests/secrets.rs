//! Secrets are never stored in clear and never logged: after a scenario
//! that issues every kind of secret (admin key, join token, password, TOTP
//! seed, device private keys), the database files and every log line at
//! trace level are searched for each of them in every encoding we use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ztmesh_e2e::{FakePosture, TestAgent, TestServer, totp_now};
use ztmesh_proto::JoinToken;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every text form a secret could take in our code.
fn forms(secret: &[u8]) -> Vec<String> {
    let mut forms = vec![
        hex::encode(secret),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        ztmesh_server::auth::base32::encode(secret),
    ];
    if let Ok(text) = std::str::from_utf8(secret) {
        forms.push(text.to_owned());
    }
    forms.retain(|f| f.len() >= 12);
    forms
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_stored_or_logged_in_clear() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let server = TestServer::start(None).await;
    let password = "a long and secret passphrase 42";
    let totp = server
        .create_user("erin@example.com", &["eng"], password)
        .await;
    let token = server.token(&["server"], false, 0).await;
    let tagged = TestAgent::join(&token, "tagged").await.unwrap();
    let laptop = TestAgent::login(
        &server,
        "erin@example.com",
        password,
        &totp_now(&totp),
        "erin-laptop",
        FakePosture::compliant(),
    )
    .await
    .unwrap();
    tagged
        .wait_status("connected", std::time::Duration::from_secs(5), |s| {
            s.control_connected
        })
        .await;
    laptop
        .wait_status("connected", std::time::Duration::from_secs(5), |s| {
            s.control_connected
        })
        .await;

    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("password", password.as_bytes().to_vec()),
        ("totp seed", totp.as_bytes().to_vec()),
    ];
    let admin_secret = server.admin_key().split_once('.').unwrap().1.to_owned();
    secrets.push(("admin key secret", admin_secret.into_bytes()));
    let join = JoinToken::decode(&token).unwrap();
    secrets.push(("join token", token.clone().into_bytes()));
    secrets.push((
        "join secret",
        join.secret.split_once('.').unwrap().1.as_bytes().to_vec(),
    ));
    for agent in [&tagged, &laptop] {
        let dir = agent.state.path();
        let wg = std::fs::read_to_string(dir.join("wireguard.key")).unwrap();
        secrets.push(("wireguard private key", STANDARD.decode(wg.trim()).unwrap()));
        let identity = std::fs::read_to_string(dir.join("identity.key")).unwrap();
        let body: String = identity
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        secrets.push(("identity key", STANDARD.decode(body).unwrap()));
    }
    tagged.stop().await;
    laptop.stop().await;

    // The database files, byte for byte (including the WAL and freed pages).
    let mut database = Vec::new();
    for entry in std::fs::read_dir(server.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("ztmesh.db") {
            database.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(database.len() > 4096, "the database files were found");
    let logs = logs.0.lock().unwrap().clone();
    assert!(
        logs.len() > 10_000,
        "trace logs were captured ({} bytes)",
        logs.len()
    );
    let mut checked = 0;
    for (what, secret) in &secrets {
        for form in forms(secret) {
            assert!(
                !contains(&database, &form),
                "the database holds the {what} in clear ({form})"
            );
            assert!(
                !contains(&logs, &form),
                "a log line holds the {what} ({form})"
            );
            checked += 1;
        }
    }
    eprintln!(
        "searched {} database bytes and {} log bytes for {} secrets in {checked} encodings: none found",
        database.len(),
        logs.len(),
        secrets.len()
    );
}
