//! Identity and device trust, end to end in one process: user login with
//! password + TOTP, rate limiting, device approval, node key expiry, key
//! rotation under traffic, and posture falling out of and back into
//! compliance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ztmesh_e2e::packets::{ping, tcp};
use ztmesh_e2e::{FakePosture, TestAgent, TestServer, totp_now};

const POLICY: &str = r#"
[groups]
eng = []   # members come from the user directory

[postures.secure]
disk_encrypted = true
min_daemon_version = "0.1.0"

[segments]
laptops = { groups = ["eng"] }
secure-laptops = { groups = ["eng"], posture = ["secure"] }
servers = { tags = ["server"] }

[[rules]]
name = "ssh-needs-posture"
from = ["secure-laptops"]
to = ["servers"]
ports = ["tcp/22"]

[[rules]]
name = "icmp"
from = ["laptops", "servers"]
to = ["laptops", "servers"]
ports = ["icmp"]
"#;

const PASSWORD: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(500);

fn has_peer(status: &ztmesh_agent::status::Status, name: &str) -> bool {
    status.peers.iter().any(|p| p.name == name)
}

async fn server_agent(server: &TestServer, name: &str) -> TestAgent {
    TestAgent::join(&server.token(&["server"], false, 0).await, name)
        .await
        .unwrap()
}

/// Tries a login; returns the error text and how long the refusal took.
async fn failed_login(
    server: &TestServer,
    user: &str,
    password: &str,
    code: &str,
) -> (String, Duration) {
    let start = Instant::now();
    let result =
        TestAgent::login(server, user, password, code, "x", FakePosture::compliant()).await;
    let elapsed = start.elapsed();
    match result {
        Ok(_) => panic!("login as {user} must fail"),
        Err(e) => (format!("{e:#}"), elapsed),
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_needs_password_and_totp_and_failures_look_alike() {
    let server = TestServer::start(None).await;
    server.set_policy(POLICY).await.unwrap();
    let alice = server
        .create_user("alice@example.com", &["eng"], PASSWORD)
        .await;
    let bob = server
        .create_user("bob@example.com", &["eng"], PASSWORD)
        .await;
    let web = server_agent(&server, "web").await;

    // Wrong password, wrong code, unknown user: one message, similar time.
    let mut timings = [Vec::new(), Vec::new(), Vec::new()];
    let mut messages = Vec::new();
    for _ in 0..3 {
        let cases = [
            ("alice@example.com", "wrong password!!", totp_now(&alice)),
            ("bob@example.com", PASSWORD, "000000".to_owned()),
            ("nobody@example.com", PASSWORD, totp_now(&bob)),
        ];
        for (i, (user, password, code)) in cases.iter().enumerate() {
            let (message, took) = failed_login(&server, user, password, code).await;
            messages.push(message);
            timings[i].push(took);
        }
    }
    assert!(
        messages
            .iter()
            .all(|m| m.contains("login failed: wrong user name, password or code")),
        "{messages:#?}"
    );
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "every failure reads the same: {messages:?}"
    );
    let [wrong_password, wrong_code, unknown] = timings.map(median);
    eprintln!(
        "median refusal: wrong password {wrong_password:?}, wrong code {wrong_code:?}, unknown user {unknown:?}"
    );
    for other in [wrong_code, unknown] {
        let ratio = other.as_secs_f64() / wrong_password.as_secs_f64();
        assert!(
            (0.33..3.0).contains(&ratio),
            "refusals must cost the same work: {other:?} vs {wrong_password:?}"
        );
    }

    // The right password and code enroll a device owned by alice.
    let code = totp_now(&alice);
    let laptop = TestAgent::login(
        &server,
        "alice@example.com",
        PASSWORD,
        &code,
        "alice-laptop",
        FakePosture::compliant(),
    )
    .await
    .unwrap();
    let record = server.device("alice-laptop").await;
    assert_eq!(record.user, "alice@example.com");
    assert!(record.tags.is_empty(), "a user's device carries no tags");
    laptop
        .wait_status("peer web via the eng directory group", WAIT, |s| {
            has_peer(s, "web")
        })
        .await;
    // The same code cannot be used twice.
    let (replay, _) = failed_login(&server, "alice@example.com", PASSWORD, &code).await;
    assert!(replay.contains("login failed"), "{replay}");

    // Disabling the user cuts the device off every peer.
    server
        .admin()
        .set_user_disabled(server.request(ztmesh_proto::v1::SetUserDisabledRequest {
            name: "alice@example.com".into(),
            disabled: true,
        }))
        .await
        .unwrap();
    let took = web
        .wait_status("alice-laptop gone", WAIT, |s| !has_peer(s, "alice-laptop"))
        .await;
    eprintln!("disabled user's device left the peer list after {took:?}");
    assert_eq!(server.device("alice-laptop").await.status, "user-disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_rate_limited() {
    let server = TestServer::start(None).await;
    let carol = server.create_user("carol@example.com", &[], PASSWORD).await;
    for _ in 0..5 {
        let (message, _) =
            failed_login(&server, "carol@example.com", "not the password", "123456").await;
        assert!(message.contains("login failed"), "{message}");
    }
    // Now even the right credentials wait.
    let (message, _) =
        failed_login(&server, "carol@example.com", PASSWORD, &totp_now(&carol)).await;
    assert!(message.contains("too many failed logins"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gates_new_devices() {
    let server = TestServer::start(None).await;
    server.set_policy(POLICY).await.unwrap();
    let s0 = server_agent(&server, "s0").await;
    server.settings(Some(true), None).await;
    let mut s1 = server_agent(&server, "s1").await;
    assert_eq!(server.device("s1").await.status, "pending-approval");
    tokio::time::sleep(SHORT).await;
    assert!(
        !has_peer(&s0.status().await, "s1"),
        "an unapproved device reaches nobody"
    );
    assert!(
        s1.status().await.peers.is_empty(),
        "an unapproved device gets no peers"
    );

    server
        .admin()
        .approve_device(server.request(ztmesh_proto::v1::DeviceRef {
            device: "s1".into(),
        }))
        .await
        .unwrap();
    s0.wait_status("peer s1 after approval", WAIT, |s| has_peer(s, "s1"))
        .await;
    s1.wait_status("peer s0 after approval", WAIT, |s| has_peer(s, "s0"))
        .await;
    s0.send(ping(s0.address, s1.address, 7)).await;
    assert!(
        s1.receive(WAIT).await.is_some(),
        "traffic flows once approved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_node_keys_drop_out() {
    let server = TestServer::start(None).await;
    server.set_policy(POLICY).await.unwrap();
    let s0 = server_agent(&server, "s0").await;
    let s1 = server_agent(&server, "s1").await;
    s0.wait_status("peer s1", WAIT, |s| has_peer(s, "s1")).await;

    // An admin expires s1's key: it leaves every peer list and is refused.
    server
        .admin()
        .expire_device(server.request(ztmesh_proto::v1::DeviceRef {
            device: "s1".into(),
        }))
        .await
        .unwrap();
    s0.wait_status("s1 gone", WAIT, |s| !has_peer(s, "s1"))
        .await;
    s1.wait_status("s1 keeps nothing", WAIT, |s| {
        s.peers.is_empty() && !s.control_connected
    })
    .await;
    assert_eq!(server.device("s1").await.status, "expired");

    // A device that is offline past its expiry drops out by itself.
    server.settings(None, Some(4)).await;
    let s2 = server_agent(&server, "s2").await;
    s0.wait_status("peer s2", WAIT, |s| has_peer(s, "s2")).await;
    s2.stop().await;
    let took = s0
        .wait_status("s2 expired", Duration::from_secs(10), |s| {
            !has_peer(s, "s2")
        })
        .await;
    eprintln!("an offline device left the peer lists {took:?} after it stopped (key lifetime 4 s)");
    assert_eq!(server.device("s2").await.status, "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_under_traffic_without_losing_a_ping() {
    let server = TestServer::start(None).await;
    server.set_policy(POLICY).await.unwrap();
    // A 6 s key lifetime: each daemon rotates about every 4 s.
    server.settings(None, Some(6)).await;
    let a = server_agent(&server, "a").await;
    let mut b = server_agent(&server, "b").await;
    a.wait_status("peer b", WAIT, |s| has_peer(s, "b")).await;
    let first_a = server.device("a").await.public_key;
    let first_b = server.device("b").await.public_key;

    let mut keys_a = vec![first_a];
    let mut keys_b = vec![first_b];
    let (mut sent, mut lost) = (0u32, 0u32);
    let start = Instant::now();
    let mut id: u16 = 0;
    while start.elapsed() < Duration::from_secs(14) {
        id = id.wrapping_add(1);
        let packet = ping(a.address, b.address, id);
        a.send(packet.clone()).await;
        sent += 1;
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut got = false;
        while let Some(remaining) = deadline.checked_duration_since(Instant::now()) {
            match b.receive(remaining).await {
                Some(received) if received == packet => {
                    got = true;
                    break;
                }
                Some(_) => continue,
                None => break,
            }
        }
        if !got {
            lost += 1;
        }
        for (name, keys) in [("a", &mut keys_a), ("b", &mut keys_b)] {
            let key = server.device(name).await.public_key;
            if keys.last() != Some(&key) {
                keys.push(key);
            }
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    eprintln!(
        "rotation under traffic: {sent} pings, {lost} lost; a used {} keys, b used {}",
        keys_a.len(),
        keys_b.len()
    );
    assert!(
        keys_a.len() >= 3 && keys_b.len() >= 3,
        "both daemons rotated at least twice"
    );
    assert_eq!(lost, 0, "no ping may be lost across key rotations");
    // The rotated keys are what the daemons really use.
    let status = a.status().await;
    let current = server.device("a").await.public_key;
    assert_eq!(
        status.public_key,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, current)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posture_falls_out_of_and_back_into_compliance() {
    let server = TestServer::start(None).await;
    server.set_policy(POLICY).await.unwrap();
    let dave = server
        .create_user("dave@example.com", &["eng"], PASSWORD)
        .await;
    let posture = FakePosture::compliant();
    let laptop = TestAgent::login(
        &server,
        "dave@example.com",
        PASSWORD,
        &totp_now(&dave),
        "dave-laptop",
        posture.clone(),
    )
    .await
    .unwrap();
    let mut ssh = server_agent(&server, "ssh").await;
    laptop
        .wait_status("peer ssh", WAIT, |s| has_peer(s, "ssh"))
        .await;
    let wait_checks = |passing: bool| {
        let server = &server;
        async move {
            let start = Instant::now();
            loop {
                let detail = server.show("dave-laptop").await;
                let disk = detail.checks.iter().find(|c| c.check == "disk_encrypted");
                if disk.is_some_and(|c| c.passed == passing) {
                    return (start.elapsed(), detail);
                }
                assert!(
                    start.elapsed() < WAIT,
                    "posture checks never became {passing}: {detail:#?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (_, detail) = wait_checks(true).await;
    assert_eq!(detail.posture.as_ref().unwrap().os, "linux");
    let (from, to) = (laptop.address, ssh.address);
    let syn = move |port: u16| tcp(from, to, port, 22, ztmesh_e2e::packets::SYN);
    laptop.send(syn(40001)).await;
    assert!(ssh.receive(WAIT).await.is_some(), "compliant: ssh allowed");

    // The disk is no longer encrypted: ssh is cut, icmp (no posture) stays.
    let start = Instant::now();
    posture.set(|p| p.disk_encrypted = Some(false));
    let (_, detail) = wait_checks(false).await;
    let failed = detail.checks.iter().find(|c| !c.passed).unwrap();
    assert_eq!(
        (failed.segment.as_str(), failed.check.as_str()),
        ("secure-laptops", "disk_encrypted")
    );
    ssh.wait_status("ssh rule withdrawn", WAIT, |s| {
        s.policy_version > 0 && !s.rule_hits.is_empty()
    })
    .await;
    let mut port = 41000;
    loop {
        ssh.drain();
        port += 1;
        laptop.send(syn(port)).await;
        if ssh.receive(SHORT).await.is_none() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "non-compliant laptop still reaches ssh"
        );
    }
    eprintln!(
        "out of compliance: ssh cut {:?} after the posture changed",
        start.elapsed()
    );
    laptop.send(ping(laptop.address, ssh.address, 9)).await;
    assert!(ssh.receive(WAIT).await.is_some(), "icmp needs no posture");

    // Compliant again: access comes back.
    let start = Instant::now();
    posture.set(|p| p.disk_encrypted = Some(true));
    wait_checks(true).await;
    loop {
        ssh.drain();
        port += 1;
        laptop.send(syn(port)).await;
        if ssh.receive(SHORT).await.is_some() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "compliant laptop does not reach ssh again"
        );
    }
    eprintln!(
        "back in compliance: ssh allowed {:?} after the posture changed",
        start.elapsed()
    );
}
