//! Seeing what the network does: flow records, the events stream with
//! its key re-check, and the server's and daemon's metrics.

use std::time::{Duration, Instant};

use ztmesh_e2e::TestServer;
use ztmesh_e2e::packets::{SYN, tcp};
use ztmesh_proto::v1;

use super::{POLICY, WAIT, agent, delivered_once, until_delivered};

async fn flows(server: &TestServer, device: &str, denied: bool) -> Vec<v1::FlowRecord> {
    server
        .admin()
        .list_flows(server.request(v1::ListFlowsRequest {
            device: device.into(),
            denied,
            since: 0,
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .flows
        .into_iter()
        .filter_map(|f| f.record)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_records_events_and_metrics_reach_the_admin() {
    let metrics = ztmesh_e2e::free_local_addr();
    let server = TestServer::start_with(None, |c| c.metrics_listen = Some(metrics)).await;
    let mut events = server
        .admin()
        .watch_events(server.request(v1::WatchEventsRequest { kinds: vec![] }))
        .await
        .unwrap()
        .into_inner();
    let client = agent(&server, "client", "c1").await;
    let mut web = agent(&server, "web", "w1").await;
    server.set_policy(POLICY).await.unwrap();
    until_delivered(&client, &mut web, 443).await;
    assert!(!delivered_once(&client, &mut web, 22, 61000).await);
    client
        .send(tcp(client.address, web.address, 61001, 22, SYN))
        .await;

    // The daemon reports within a few seconds; drops carry rule and verdict.
    let start = Instant::now();
    let denied = loop {
        let records = flows(&server, "w1", true).await;
        let ssh_packets: u64 = records
            .iter()
            .filter(|r| r.dst_port == 22)
            .map(|r| r.packets)
            .sum();
        if ssh_packets >= 2 {
            break records;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no denied flow record for tcp/22"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ssh: Vec<&v1::FlowRecord> = denied.iter().filter(|r| r.dst_port == 22).collect();
    assert!(
        ssh.iter()
            .all(|r| r.verdict == "denied" && r.rule == "no-ssh" && r.proto == 6)
    );
    assert_eq!(ssh.iter().map(|r| r.packets).sum::<u64>(), 2);
    assert!(
        ssh.iter()
            .all(|r| r.bytes == 40 * r.packets && r.src == client.address.to_string())
    );
    assert!(denied.iter().all(|r| r.verdict != "allowed"));
    let all = flows(&server, "w1", false).await;
    assert!(
        all.iter()
            .any(|r| r.dst_port == 443 && r.verdict == "allowed" && r.rule == "clients-to-web"),
        "{all:#?}"
    );
    assert!(
        flows(&server, "c1", false)
            .await
            .iter()
            .all(|r| r.dst_port != 22)
    );

    // The server's metrics carry the daemons' reported counters.
    let text = ztmesh_e2e::scrape(metrics).await;
    for line in [
        "ztmesh_server_devices{standing=\"active\"} 2",
        "ztmesh_server_connected_devices 2",
        "ztmesh_server_policy_version 1",
        "ztmesh_server_policy_rules 2",
        "ztmesh_device_dropped_packets_total{device=\"w1\",reason=\"denied\"} 2",
        "ztmesh_device_rule_hits_total{device=\"w1\",rule=\"no-ssh\"} 2",
        "ztmesh_device_policy_version{device=\"w1\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    // And the daemon's own metrics come from its status.
    let status = web.status().await;
    let daemon = ztmesh_agent::metrics::render(Some(&status));
    assert!(
        daemon.lines().any(|l| l == "ztmesh_daemon_packets_total{direction=\"inbound\",verdict=\"dropped\",reason=\"denied\"} 2"),
        "{daemon}"
    );
    let error = server
        .admin()
        .list_flows(server.request(v1::ListFlowsRequest {
            device: "nope".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);

    // Events: enrollments, connections, the policy version, a revocation.
    server.revoke("c1").await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !seen.contains(&("device.disconnected".to_owned(), "c1".to_owned())) {
        let next = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            events.message(),
        )
        .await
        .expect("events within 5 s")
        .unwrap()
        .expect("the stream stays open");
        seen.push((next.kind, next.object));
    }
    for expected in [
        ("device.enrolled", "c1"),
        ("device.connected", "c1"),
        ("device.enrolled", "w1"),
        ("device.connected", "w1"),
        ("policy.version", "version 1"),
        ("device.revoked", "c1"),
    ] {
        assert!(
            seen.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} missing from {seen:?}"
        );
    }
    let error = server
        .admin()
        .watch_events(server.request(v1::WatchEventsRequest {
            kinds: vec!["device.exploded".into()],
        }))
        .await
        .unwrap_err();
    assert!(error.message().contains("unknown event kind"), "{error:?}");

    // An auditor may watch; revoking its key ends the stream.
    let owner = server.admin_key().to_owned();
    let auditor = server.api_key_as(&owner, "auditor", 0).await.unwrap();
    let auditor_id = auditor
        .trim_start_matches("ztk_")
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let mut watching = server
        .admin()
        .watch_events(server.request_as(&auditor, v1::WatchEventsRequest { kinds: vec![] }))
        .await
        .unwrap()
        .into_inner();
    server
        .admin()
        .revoke_api_key(server.request(v1::RevokeApiKeyRequest { id: auditor_id }))
        .await
        .unwrap();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match watching.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream of a revoked key ends within seconds")
    .expect("with a status");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("event stream"), "{ended:?}");
}
