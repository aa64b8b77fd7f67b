//! NAT traversal in process: a daemon learns its public endpoint from the
//! server's STUN responder, asking from its WireGuard socket (so the
//! answer is the mapping WireGuard traffic gets); the server checks what
//! daemons report; the relay admits enrolled devices only (`relay.rs`).
//! The real network shapes (NATs, roaming, relayed paths) are in
//! `tests/netns/test_nat.py`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod relay;

use std::time::Duration;

use ztmesh_e2e::{TestAgent, TestServer, free_udp_addr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_learns_its_public_endpoint_over_stun() {
    let stun = free_udp_addr();
    let server = TestServer::start_with(None, |c| c.stun_listen = Some(stun)).await;
    let agent = TestAgent::join(&server.token(&["web"], false, 0).await, "web-1")
        .await
        .unwrap();
    // The status socket comes up with the data plane; the first STUN
    // answer follows the first network map.
    let start = std::time::Instant::now();
    let status = loop {
        if let Ok(s) = ztmesh_agent::status::query(&agent.state.socket_path()).await
            && s.public_endpoint.is_some()
        {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no public endpoint learned within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.public_endpoint.as_deref(),
        Some(format!("127.0.0.1:{}", status.listen_port).as_str())
    );

    // Without a STUN responder there is nothing to learn, and nothing breaks.
    let plain = TestServer::start(None).await;
    let other = TestAgent::join(&plain.token(&["web"], false, 0).await, "web-2")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while !ztmesh_agent::status::query(&other.state.socket_path())
        .await
        .is_ok_and(|s| s.control_connected)
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "web-2 did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(other.status().await.public_endpoint, None);
}

/// Calls ReportEndpoint with the device's own certificate.
async fn report(
    agent: &TestAgent,
    endpoint: &str,
) -> Result<ztmesh_proto::v1::EndpointReportResponse, tonic::Status> {
    report_with(agent, endpoint, &[]).await
}

/// Calls ReportEndpoint with interface candidates too.
async fn report_with(
    agent: &TestAgent,
    endpoint: &str,
    candidates: &[&str],
) -> Result<ztmesh_proto::v1::EndpointReportResponse, tonic::Status> {
    let keys = ztmesh_agent::keys::DeviceKeys::load(&agent.state).unwrap();
    let enrollment = agent.state.enrollment().unwrap().unwrap();
    let config = ztmesh_agent::control::ControlConfig {
        server_url: enrollment.server_url,
        ca_pem: keys.ca_cert_pem.clone(),
        credentials: std::sync::Arc::new(std::sync::RwLock::new(
            ztmesh_agent::control::Credentials {
                cert_pem: keys.client_cert_pem.clone(),
                key_pem: keys.identity_key_pem.clone(),
            },
        )),
        listen_port: 0,
    };
    ztmesh_rpc::v1::control_client::ControlClient::new(config.channel().await.unwrap())
        .report_endpoint(ztmesh_proto::v1::EndpointReport {
            public_endpoint: endpoint.into(),
            candidates: candidates.iter().map(|c| (*c).to_owned()).collect(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_endpoint_is_taken_only_at_the_connecting_address() {
    let server = TestServer::start(None).await;
    let agent = TestAgent::join(&server.token(&["web"], false, 0).await, "web-1")
        .await
        .unwrap();
    // Once its stream is up (connecting records the observed endpoint)...
    let start = std::time::Instant::now();
    while !ztmesh_agent::status::query(&agent.state.socket_path())
        .await
        .is_ok_and(|s| s.control_connected)
        || server.device("web-1").await.endpoints.is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "web-1 did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...a NAT mapping the WireGuard port to another port at the same
    // address is taken.
    let accepted = report(&agent, "127.0.0.1:40001").await.unwrap();
    assert!(accepted.accepted, "{accepted:?}");
    assert_eq!(server.device("web-1").await.endpoints, ["127.0.0.1:40001"]);
    // Another address would aim the peers' handshakes at a third party.
    let refused = report(&agent, "198.51.100.7:40001").await.unwrap();
    assert!(!refused.accepted);
    assert!(refused.reason.contains("not at 127.0.0.1"), "{refused:?}");
    assert_eq!(server.device("web-1").await.endpoints, ["127.0.0.1:40001"]);
    let bad = report(&agent, "nonsense").await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interface_candidates_reach_the_peers_after_the_public_endpoint_and_bad_ones_are_refused() {
    let server = TestServer::start(None).await;
    let agent = TestAgent::join(&server.token(&["web"], false, 0).await, "web-1")
        .await
        .unwrap();
    // A client the example policy lets reach web-1, so web-1 is its peer.
    let peer = TestAgent::join(&server.token(&["client"], false, 0).await, "client-1")
        .await
        .unwrap();
    server
        .set_policy(include_str!("../../deploy/example-policy.toml"))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while server.device("web-1").await.endpoints.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "web-1 did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let observed = server.device("web-1").await.endpoints;
    // Candidates alone (no STUN answer yet) come after the observed endpoint,
    // each once.
    let taken = report_with(
        &agent,
        "",
        &["10.1.2.3:5000", "192.168.7.7:5000", "10.1.2.3:5000"],
    )
    .await
    .unwrap();
    assert!(taken.accepted, "{taken:?}");
    let mut want = observed.clone();
    want.extend(["10.1.2.3:5000".to_owned(), "192.168.7.7:5000".to_owned()]);
    assert_eq!(server.device("web-1").await.endpoints, want);
    // The peer is told: its status lists every path it will probe.
    let start = std::time::Instant::now();
    loop {
        let status = peer.status().await;
        let endpoints = status
            .peers
            .iter()
            .find(|p| p.name == "web-1")
            .map(|p| p.endpoints.clone())
            .unwrap_or_default();
        if endpoints == want {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "client-1 has {endpoints:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bad candidates are refused whole, say why, and change nothing.
    let nine: Vec<String> = (1..=9).map(|i| format!("10.0.0.{i}:5000")).collect();
    let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
    for (bad, why) in [
        (&["100.64.0.9:5000"][..], "inside the overlay"),
        (&["224.0.0.1:5000"][..], "not a unicast address"),
        (&["169.254.1.1:5000"][..], "not a unicast address"),
        (&["10.0.0.1:0"][..], "port 0"),
        (&["10.0.0.1"][..], "not IP:PORT"),
        (&nine[..], "at most 8"),
    ] {
        let refused = report_with(&agent, "", bad).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{bad:?}");
        assert!(
            refused.message().contains(why),
            "{bad:?}: {}",
            refused.message()
        );
        assert_eq!(server.device("web-1").await.endpoints, want);
    }
    // A STUN endpoint comes first; the candidates stay behind it.
    let port = observed[0].rsplit(':').next().unwrap();
    let public = format!("127.0.0.1:{}", port.parse::<u16>().unwrap().wrapping_add(1));
    let taken = report_with(&agent, &public, &["10.1.2.3:5000"])
        .await
        .unwrap();
    assert!(taken.accepted, "{taken:?}");
    assert_eq!(
        server.device("web-1").await.endpoints,
        [public, "10.1.2.3:5000".to_owned()]
    );
}
