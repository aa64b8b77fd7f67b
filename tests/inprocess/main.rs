//! In-process end-to-end tests: a coordination server and several daemons
//! in one process, over loopback gRPC/TLS and real UDP, with in-memory TUN
//! devices. Every packet goes through boringtun, cryptokey routing and the
//! stateful filter exactly as on a real node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ztmesh_e2e::packets::{SYN, SYN_ACK, ping, pong, tcp};
use ztmesh_e2e::{TestAgent, TestServer};
use ztmesh_proto::JoinToken;

/// The example policy shared with the demo and the namespace test.
const POLICY: &str = include_str!("../../deploy/example-policy.toml");

const SHORT: Duration = Duration::from_millis(400);
const DELIVERY: Duration = Duration::from_secs(3);
const PROPAGATION_BAR: Duration = Duration::from_secs(1);

fn drops(status: &ztmesh_agent::status::Status, reason: &str) -> u64 {
    status.drops.get(reason).copied().unwrap_or(0)
}

/// A client `n1` and a web server `n2` under the example policy, connected.
async fn client_and_web(server: &TestServer) -> (TestAgent, TestAgent) {
    let n1 = TestAgent::join(&server.token(&["client"], false, 0).await, "n1")
        .await
        .unwrap();
    let n2 = TestAgent::join(&server.token(&["web"], false, 0).await, "n2")
        .await
        .unwrap();
    server.set_policy(POLICY).await.unwrap();
    n1.wait_status("peer n2", DELIVERY, |s| {
        s.peers.iter().any(|p| p.name == "n2")
    })
    .await;
    (n1, n2)
}

/// `from` sends `packet`; `to` must not deliver it and must count one more
/// drop for `reason`.
async fn assert_dropped(from: &TestAgent, to: &mut TestAgent, packet: Vec<u8>, reason: &str) {
    let before = drops(&to.status().await, reason);
    from.send(packet).await;
    assert_eq!(
        to.receive(SHORT).await,
        None,
        "{} -> {}: must be dropped ({reason})",
        from.name,
        to.name
    );
    to.wait_status(&format!("{reason} drop counted"), DELIVERY, |s| {
        drops(s, reason) > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_enforces_policy_end_to_end() {
    let mut server = TestServer::start(None).await;
    let mut n1 = TestAgent::join(&server.token(&["client"], false, 0).await, "n1")
        .await
        .unwrap();
    let mut n2 = TestAgent::join(&server.token(&["web"], false, 0).await, "n2")
        .await
        .unwrap();
    let mut n3 = TestAgent::join(&server.token(&["db"], false, 0).await, "n3")
        .await
        .unwrap();
    for agent in [&n1, &n2, &n3] {
        agent
            .wait_status("connected", DELIVERY, |s| s.control_connected)
            .await;
    }

    // Before any policy: no peers, nothing passes.
    assert!(n1.status().await.peers.is_empty());
    n1.send(tcp(n1.address, n2.address, 40000, 80, SYN)).await;
    assert_eq!(
        n2.receive(SHORT).await,
        None,
        "default deny before the first policy"
    );

    // A policy reaches every affected daemon within a second.
    server.set_policy(POLICY).await.unwrap();
    let took = n1
        .wait_status("peer n2 and policy v1", PROPAGATION_BAR, |s| {
            s.policy_version == 1 && s.peers.iter().any(|p| p.name == "n2")
        })
        .await;
    eprintln!("policy propagation to n1: {took:?}");
    n2.wait_status("policy v1", PROPAGATION_BAR, |s| s.policy_version == 1)
        .await;
    n3.wait_status("policy v1", PROPAGATION_BAR, |s| s.policy_version == 1)
        .await;
    assert!(
        n1.status().await.peers.iter().all(|p| p.name != "n3"),
        "least privilege: n1 has no tunnel to n3"
    );

    // Allowed flow and its return traffic.
    let syn = tcp(n1.address, n2.address, 40001, 80, SYN);
    n1.send(syn.clone()).await;
    assert_eq!(
        n2.receive(DELIVERY).await,
        Some(syn),
        "clients -> web tcp/80 passes"
    );
    let syn_ack = tcp(n2.address, n1.address, 80, 40001, SYN_ACK);
    n2.send(syn_ack.clone()).await;
    assert_eq!(
        n1.receive(DELIVERY).await,
        Some(syn_ack),
        "return traffic passes"
    );
    // Data from n2 proved its endpoint: n1 has a socket connected to it,
    // and what follows (the echo, the drops) goes through it.
    n1.wait_status("a connected socket to n2", DELIVERY, |s| {
        s.peers.iter().any(|p| p.name == "n2" && p.connected_socket)
    })
    .await;
    let echo = ping(n1.address, n2.address, 7);
    n1.send(echo.clone()).await;
    assert_eq!(n2.receive(DELIVERY).await, Some(echo), "icmp allowed");

    // Unsolicited traffic in the other direction is dropped at the receiver.
    let unsolicited = tcp(n2.address, n1.address, 40002, 22, SYN);
    assert_dropped(&n2, &mut n1, unsolicited, "no_rule").await;

    // A denied port between peers is dropped by the receiver's filter.
    let denied_port = tcp(n3.address, n2.address, 40003, 80, SYN);
    assert_dropped(&n3, &mut n2, denied_port, "no_rule").await;
    let allowed = tcp(n2.address, n3.address, 40004, 5432, SYN);
    n2.send(allowed.clone()).await;
    assert_eq!(
        n3.receive(DELIVERY).await,
        Some(allowed),
        "web -> db tcp/5432 passes"
    );

    // A spoofed inner source is caught by cryptokey routing.
    // n1 routes by destination (n2) but claims n3's address as source.
    let spoofed = tcp(n3.address, n2.address, 40005, 80, SYN);
    assert_dropped(&n1, &mut n2, spoofed, "cryptokey_routing").await;

    // Junk handshakes from a stranger are dropped before any key work, and
    // do not disturb the tunnels.
    let before = drops(&n2.status().await, "unknown_peer");
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = ("127.0.0.1", n2.status().await.listen_port);
    for n in 0..20u8 {
        let mut junk = vec![n; 148];
        junk[..4].copy_from_slice(&[1, 0, 0, 0]);
        stranger.send_to(&junk, target).await.unwrap();
    }
    n2.wait_status("junk counted", DELIVERY, |s| {
        drops(s, "unknown_peer") >= before + 20
    })
    .await;
    let syn = tcp(n1.address, n2.address, 40010, 80, SYN);
    n1.send(syn.clone()).await;
    assert_eq!(
        n2.receive(DELIVERY).await,
        Some(syn),
        "tunnels unaffected by junk"
    );

    // A new device reaches the affected daemons within a second.
    let n4 = TestAgent::join(&server.token(&["client"], false, 0).await, "n4")
        .await
        .unwrap();
    let took = n2
        .wait_status("peer n4", PROPAGATION_BAR, |s| {
            s.peers.iter().any(|p| p.name == "n4")
        })
        .await;
    eprintln!("join propagation to n2: {took:?}");

    // With the server down, established tunnels keep working.
    server.halt().await;
    n1.wait_status("control disconnected", DELIVERY, |s| !s.control_connected)
        .await;
    let syn = tcp(n1.address, n2.address, 40006, 80, SYN);
    n1.send(syn.clone()).await;
    assert_eq!(
        n2.receive(DELIVERY).await,
        Some(syn),
        "traffic flows without the server"
    );
    // ... and daemons reconnect by themselves when it returns.
    server.restart().await;
    for agent in [&n1, &n2, &n3] {
        agent
            .wait_status("reconnected", Duration::from_secs(15), |s| {
                s.control_connected
            })
            .await;
    }

    // Revocation: removed from every peer within a second, then cut off.
    server.revoke("n1").await.unwrap();
    let took = n2
        .wait_status("n1 removed", PROPAGATION_BAR, |s| {
            s.peers.iter().all(|p| p.name != "n1")
        })
        .await;
    eprintln!("revocation propagation to n2: {took:?}");
    n2.drain();
    n1.send(tcp(n1.address, n2.address, 40007, 80, SYN)).await;
    assert_eq!(
        n2.receive(SHORT).await,
        None,
        "a revoked device reaches nobody"
    );
    // The revoked daemon is refused by the server and keeps nothing.
    n1.wait_status("refused and emptied", DELIVERY, |s| {
        !s.control_connected && s.peers.is_empty() && s.policy_version == 0
    })
    .await;
    let devices = server.devices().await;
    let n1_record = devices.iter().find(|d| d.name == "n1").unwrap();
    assert_eq!(n1_record.status, "revoked");

    for agent in [n1, n2, n3, n4] {
        agent.stop().await;
    }
    server.stop().await;
}

/// The TUN side's reading: a lone request (a ping, a query) is read once,
/// with no read after it that finds the device empty (its readiness says
/// when more comes); a burst written at once still arrives whole and in
/// order, read in batches. (After a lone packet with no answer between, a
/// second one is taken as a stream: it is read on, and may find the device
/// empty.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_packets_are_read_once_and_bursts_arrive_whole() {
    let server = TestServer::start(None).await;
    let (mut n1, mut n2) = client_and_web(&server).await;
    // The first packet waits for the handshake.
    let first = tcp(n1.address, n2.address, 41000, 80, SYN);
    n1.send(first.clone()).await;
    assert_eq!(n2.receive(DELIVERY).await, Some(first));

    // A ping and its reply, 20 times: the reply's turn comes between
    // two requests (as between any request and the next).
    let before = n1.tun.empty_reads();
    for id in 1..=20 {
        let request = ping(n1.address, n2.address, id);
        n1.send(request.clone()).await;
        assert_eq!(n2.receive(DELIVERY).await, Some(request), "ping {id}");
        let reply = pong(n2.address, n1.address, id);
        n2.send(reply.clone()).await;
        assert_eq!(n1.receive(DELIVERY).await, Some(reply), "reply {id}");
    }
    assert_eq!(n1.tun.empty_reads(), before, "20 requests, each read once");

    let burst: Vec<Vec<u8>> = (42000..42200)
        .map(|port| tcp(n1.address, n2.address, port, 80, SYN))
        .collect();
    for packet in &burst {
        n1.send(packet.clone()).await;
    }
    for (i, packet) in burst.iter().enumerate() {
        assert_eq!(
            n2.receive(DELIVERY).await.as_ref(),
            Some(packet),
            "packet {i} of the burst"
        );
    }
    n1.stop().await;
    n2.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_are_rejected_whole() {
    let server = TestServer::start(None).await;
    server.set_policy(POLICY).await.unwrap();
    let broken = POLICY.replace("to = [\"db\"]", "to = [\"dbs\"]");
    let err = server.set_policy(&broken).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let line = POLICY.lines().position(|l| l == "to = [\"db\"]").unwrap() + 1;
    assert!(
        err.message().contains(&format!("line {line},")),
        "{}",
        err.message()
    );
    assert!(err.message().contains("`dbs`"), "{}", err.message());
    let failing_test = POLICY.replace("expect = \"deny\"", "expect = \"allow\"");
    let err = server.set_policy(&failing_test).await.unwrap_err();
    assert!(err.message().contains("test #1"), "{}", err.message());
    // The old version stays in force.
    let current = server
        .admin()
        .get_policy({
            let mut r = tonic::Request::new(ztmesh_proto::v1::GetPolicyRequest::default());
            r.metadata_mut()
                .insert("authorization", "Bearer nope.nope".parse().unwrap());
            r
        })
        .await;
    assert_eq!(current.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(server.set_policy(POLICY).await.unwrap(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_refusals_are_clear_and_lose_nothing() {
    let server = TestServer::start(None).await;

    // A single-use token works once.
    let token = server.token(&["web"], false, 0).await;
    let first = TestAgent::join(&token, "first").await.unwrap();
    let err = TestAgent::join(&token, "second").await.err().unwrap();
    assert!(format!("{err:#}").contains("already used"), "{err:#}");

    // A refused enrollment leaves the token usable (name taken: nothing burnt).
    let token = server.token(&["web"], false, 0).await;
    let err = TestAgent::join(&token, "first").await.err().unwrap();
    assert!(format!("{err:#}").contains("already taken"), "{err:#}");
    let ok = TestAgent::join(&token, "third").await.unwrap();

    // An expired token.
    let token = server.token(&[], false, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = TestAgent::join(&token, "late").await.err().unwrap();
    assert!(format!("{err:#}").contains("expired"), "{err:#}");

    // A token naming another CA: the device refuses the server.
    let mut forged = JoinToken::decode(&server.token(&[], true, 0).await).unwrap();
    forged.ca_fingerprint = "00".repeat(32);
    let err = TestAgent::join(&forged.encode(), "victim")
        .await
        .err()
        .unwrap();
    assert!(
        format!("{err:#}").contains("did not present the CA"),
        "{err:#}"
    );

    // A wrong secret and garbage.
    let mut wrong = JoinToken::decode(&server.token(&[], true, 0).await).unwrap();
    wrong.secret.push('x');
    let err = TestAgent::join(&wrong.encode(), "guess")
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("not valid"), "{err:#}");
    let err = TestAgent::join("hello", "garbage").await.err().unwrap();
    assert!(
        format!("{err:#}").contains("not a ztmesh join token"),
        "{err:#}"
    );

    assert_eq!(server.devices().await.len(), 2);
    first.stop().await;
    ok.stop().await;
    server.stop().await;
}

/// The same end-to-end path with the server on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_on_postgresql() {
    let Some(url) = std::env::var("ZTMESH_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test on PostgreSQL: set ZTMESH_TEST_DATABASE_URL (tests/run-all.sh does)"
        );
        eprintln!(
            "SKIPPED overlay_on_postgresql: ZTMESH_TEST_DATABASE_URL is not set (tests/run-all.sh sets it)"
        );
        return;
    };
    let url = ztmesh_e2e::fresh_postgres_database(&url).await;
    let server = TestServer::start(Some(url)).await;
    let (n1, mut n2) = client_and_web(&server).await;
    let syn = tcp(n1.address, n2.address, 41000, 80, SYN);
    n1.send(syn.clone()).await;
    assert_eq!(n2.receive(DELIVERY).await, Some(syn));
    let denied_port = tcp(n1.address, n2.address, 41001, 443, SYN);
    assert_dropped(&n1, &mut n2, denied_port, "no_rule").await;
    server.revoke("n1").await.unwrap();
    n2.wait_status("n1 removed", PROPAGATION_BAR, |s| s.peers.is_empty())
        .await;
    n1.stop().await;
    n2.stop().await;
    server.stop().await;
}

/// With the server gone, tunnels keep working past WireGuard's session
/// lifetime: the initiator rekeys after 120 s, and by 180 s (reject-after
/// time) every session has been replaced; traffic never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_rekey_while_the_server_is_down() {
    let server = TestServer::start(None).await;
    let (n1, mut n2) = client_and_web(&server).await;
    server.stop().await;
    n1.wait_status("control disconnected", DELIVERY, |s| !s.control_connected)
        .await;

    let start = std::time::Instant::now();
    let mut port = 42000;
    while start.elapsed() < Duration::from_secs(200) {
        let syn = tcp(n1.address, n2.address, port, 80, SYN);
        n1.send(syn.clone()).await;
        assert_eq!(
            n2.receive(DELIVERY).await,
            Some(syn),
            "packet {port} lost {:?} after the server went down",
            start.elapsed()
        );
        port += 1;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    // Every packet was delivered for longer than a session may live
    // (REJECT_AFTER_TIME, 180 s, counted from a handshake made before the
    // server stopped), so the peers must have rekeyed on their own; the
    // newest handshake has to be one made while the server was down. It
    // can be up to REKEY_AFTER_TIME (120 s) old: how many rekeys fall in
    // the window depends on keepalive timing, so no tighter bound holds.
    let down_for = start.elapsed().as_secs();
    for agent in [&n1, &n2] {
        let status = agent.status().await;
        let age = status.peers[0].last_handshake_secs.unwrap();
        assert!(
            age < down_for,
            "{}: no handshake since the server went down {down_for}s ago: last one {age}s ago",
            agent.name
        );
        eprintln!(
            "{}: rekeyed without the server, last handshake {age}s ago",
            agent.name
        );
    }
    eprintln!(
        "{} packets delivered over {:?} without the server",
        port - 42000,
        start.elapsed()
    );
    n1.stop().await;
    n2.stop().await;
}
