//! NAT traversal, the parts built so far: a daemon learns its public
//! endpoint from the server's STUN responder, asking from its WireGuard
//! socket (so the answer is the mapping WireGuard traffic gets).

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
