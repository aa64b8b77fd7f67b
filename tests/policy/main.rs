//! Shipping a policy, end to end in one process (real gRPC over TLS, real
//! UDP, boringtun, in-memory TUN devices): the what-if check, history and
//! rollback, rules that expire on their own, monitor mode, and 100 policy
//! versions applied under traffic without a denied packet getting through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ztmesh_e2e::packets::{SYN, ping, tcp};
use ztmesh_e2e::{TestAgent, TestServer};
use ztmesh_proto::v1;

const WAIT: Duration = Duration::from_secs(5);

async fn agent(server: &TestServer, tag: &str, name: &str) -> TestAgent {
    TestAgent::join(&server.token(&[tag], false, 0).await, name)
        .await
        .unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The destination port of an IPv4 TCP/UDP packet.
fn dst_port(packet: &[u8]) -> u16 {
    u16::from_be_bytes([packet[22], packet[23]])
}

/// Sends SYNs from `from` to `to` on `port` until one arrives.
async fn until_delivered(from: &TestAgent, to: &mut TestAgent, port: u16) -> Duration {
    let start = Instant::now();
    for sport in 20000u16.. {
        from.send(tcp(from.address, to.address, sport, port, SYN))
            .await;
        if let Some(p) = to.receive(Duration::from_millis(100)).await
            && dst_port(&p) == port
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "tcp/{port} from {} to {} never got through",
            from.name,
            to.name
        );
    }
    unreachable!()
}

/// Whether a SYN on `port` gets through now.
async fn delivered_once(from: &TestAgent, to: &mut TestAgent, port: u16, sport: u16) -> bool {
    to.drain();
    from.send(tcp(from.address, to.address, sport, port, SYN))
        .await;
    to.receive(Duration::from_millis(300)).await.is_some()
}

async fn check(
    server: &TestServer,
    from: &str,
    to: &str,
    port: &str,
    text: &str,
) -> v1::CheckPolicyResponse {
    server
        .admin()
        .check_policy(server.request(v1::CheckPolicyRequest {
            from: from.into(),
            to: to.into(),
            port: port.into(),
            at: 0,
            policy_text: text.into(),
        }))
        .await
        .unwrap()
        .into_inner()
}

const POLICY: &str = r#"
[segments]
clients = { tags = ["client"] }
web = { tags = ["web"] }

[[rules]]
name = "no-ssh"
from = ["clients"]
to = ["web"]
ports = ["tcp/22"]
action = "deny"

[[rules]]
name = "clients-to-web"
from = ["clients"]
to = ["web"]
ports = ["tcp", "icmp"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_history_and_rollback() {
    let server = TestServer::start(None).await;
    let client = agent(&server, "client", "c1").await;
    let mut web = agent(&server, "web", "w1").await;
    let v1 = server.set_policy(POLICY).await.unwrap();
    until_delivered(&client, &mut web, 443).await;

    // What-if between real devices names the deciding rule and segments.
    let answer = check(&server, "c1", "w1", "tcp/443", "").await;
    assert_eq!(
        (answer.action.as_str(), answer.rule.as_str()),
        ("allow", "clients-to-web")
    );
    assert_eq!(answer.from_segments, ["clients"]);
    assert_eq!(answer.to_segments, ["web"]);
    assert_eq!(answer.policy_version, v1);
    let answer = check(&server, "c1", "w1", "tcp/22", "").await;
    assert_eq!(
        (answer.action.as_str(), answer.rule.as_str()),
        ("deny", "no-ssh")
    );
    assert_eq!(answer.explanation, "denied by rule `no-ssh`");
    let answer = check(&server, "w1", "c1", "tcp/443", "").await;
    assert_eq!((answer.action.as_str(), answer.rule.as_str()), ("deny", ""));
    assert_eq!(answer.explanation, "denied: no rule matched (default deny)");
    // Endpoints, and a candidate text instead of the policy in force.
    let answer = check(&server, "tag:client", "tag:web", "udp/53", "").await;
    assert_eq!(answer.action, "deny");
    let candidate = POLICY.replace("ports = [\"tcp\", \"icmp\"]", "ports = [\"any\"]");
    let answer = check(&server, "tag:client", "tag:web", "udp/53", &candidate).await;
    assert_eq!(
        (answer.action.as_str(), answer.policy_version),
        ("allow", 0)
    );
    // Mistakes are explained.
    let error = server
        .admin()
        .check_policy(server.request(v1::CheckPolicyRequest {
            from: "nobody".into(),
            to: "w1".into(),
            port: "tcp/443".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    assert!(
        error.message().contains("no device or user named `nobody`"),
        "{error:?}"
    );
    let error = server
        .admin()
        .check_policy(server.request(v1::CheckPolicyRequest {
            from: "c1".into(),
            to: "w1".into(),
            port: "tcp/99999".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");

    // Typos in tags and shadowed rules come back as warnings.
    let typo = POLICY.replace(
        "web = { tags = [\"web\"] }",
        "web = { tags = [\"web\", \"wbe\"] }",
    );
    let checked = server
        .admin()
        .validate_policy(server.request(v1::ValidatePolicyRequest { text: typo }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.warnings.len(), 1, "{:?}", checked.warnings);
    assert!(
        checked.warnings[0].contains("tag `wbe` is carried by no device and no join token"),
        "{:?}",
        checked.warnings
    );

    // Version 2 closes the web entirely; the daemon applies it.
    let closed = POLICY.replace("ports = [\"tcp\", \"icmp\"]", "ports = [\"icmp\"]");
    let response = server
        .admin()
        .set_policy(server.request(v1::SetPolicyRequest {
            text: closed,
            comment: "close the web for maintenance".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.version, v1 + 1);
    web.wait_status("version 2 applied", WAIT, |s| s.policy_version == v1 + 1)
        .await;
    assert!(!delivered_once(&client, &mut web, 443, 30001).await);

    // Rollback makes version 1's text version 3, and traffic flows again.
    let response = server
        .admin()
        .rollback_policy(server.request(v1::RollbackPolicyRequest {
            version: v1,
            comment: "maintenance over".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.version, v1 + 2);
    until_delivered(&client, &mut web, 443).await;
    let history = server
        .admin()
        .list_policy_versions(server.request(v1::ListPolicyVersionsRequest { limit: 0 }))
        .await
        .unwrap()
        .into_inner()
        .versions;
    let summary: Vec<(u64, &str, bool)> = history
        .iter()
        .map(|v| (v.version, v.comment.as_str(), v.current))
        .collect();
    assert_eq!(
        summary,
        [
            (v1 + 2, "rollback to version 1: maintenance over", true),
            (v1 + 1, "close the web for maintenance", false),
            (v1, "", false),
        ]
    );
    assert!(
        history
            .iter()
            .all(|v| v.rules == 2 && v.author.starts_with("apikey:"))
    );
    let old = server
        .admin()
        .get_policy(server.request(v1::GetPolicyRequest { version: v1 + 1 }))
        .await
        .unwrap()
        .into_inner();
    assert!(old.text.contains("ports = [\"icmp\"]"));
    let error = server
        .admin()
        .rollback_policy(server.request(v1::RollbackPolicyRequest {
            version: 99,
            comment: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    assert!(error.message().contains("policy history"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_past_its_until_is_cut_without_anyone_acting() {
    let server = TestServer::start(None).await;
    let client = agent(&server, "client", "c1").await;
    let mut web = agent(&server, "web", "w1").await;
    let until = unix_now() + 4;
    let policy = format!(
        "[segments]\nclients = {{ tags = [\"client\"] }}\nweb = {{ tags = [\"web\"] }}\n\n\
         [[rules]]\nname = \"icmp\"\nfrom = [\"clients\"]\nto = [\"web\"]\nports = [\"icmp\"]\n\n\
         [[rules]]\nname = \"jit-https\"\nfrom = [\"clients\"]\nto = [\"web\"]\nports = [\"tcp/443\"]\nuntil = {}\n",
        ztmesh_policy::format_utc(until)
    );
    server.set_policy(&policy).await.unwrap();
    until_delivered(&client, &mut web, 443).await;
    // An established flow (same 5-tuple) keeps passing until the rule ends.
    let (src, dst) = (client.address, web.address);
    let flow = move |sport| tcp(src, dst, sport, 443, SYN);
    client.send(flow(40000)).await;
    assert!(web.receive(Duration::from_secs(2)).await.is_some());
    while unix_now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = Instant::now();
    // Within a second and a half of `until`, new and established flows stop.
    let cut = loop {
        web.drain();
        client.send(flow(40000)).await;
        if web.receive(Duration::from_millis(100)).await.is_none() {
            break ended.elapsed();
        }
        assert!(
            ended.elapsed() < Duration::from_secs(3),
            "the expired rule still lets tcp/443 through"
        );
    };
    eprintln!("tcp/443 cut {cut:?} after the rule's until");
    assert!(cut < Duration::from_millis(1500), "cut after {cut:?}");
    assert!(!delivered_once(&client, &mut web, 443, 40001).await);
    let status = web.status().await;
    assert!(
        status.drops.get("no_rule").copied().unwrap_or(0) > 0,
        "{status:#?}"
    );
    // The rest of the policy still holds.
    client.send(ping(client.address, web.address, 7)).await;
    assert!(web.receive(Duration::from_secs(2)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_mode_counts_what_it_would_drop_and_passes_it() {
    let server = TestServer::start(None).await;
    let client = agent(&server, "client", "c1").await;
    let mut web = agent(&server, "web", "w1").await;
    // POLICY with its ssh deny only monitored, and only https allowed.
    let monitored = POLICY
        .replace("action = \"deny\"\n", "action = \"deny\"\nmonitor = true\n")
        .replace("ports = [\"tcp\", \"icmp\"]", "ports = [\"tcp/443\"]");
    server.set_policy(&monitored).await.unwrap();
    until_delivered(&client, &mut web, 443).await;
    assert!(
        delivered_once(&client, &mut web, 22, 50000).await,
        "a monitored deny passes"
    );
    let answer = check(&server, "c1", "w1", "tcp/22", "").await;
    assert!(answer.monitor && answer.action == "deny", "{answer:?}");
    assert!(answer.explanation.contains("monitor mode"), "{answer:?}");
    web.wait_status("monitored flow counted", WAIT, |s| {
        s.monitored == 1 && s.rule_hits.get("no-ssh") == Some(&1)
    })
    .await;

    // Enforce: the established ssh flow is cut, new ones are dropped.
    server
        .set_policy(&monitored.replace("monitor = true\n", ""))
        .await
        .unwrap();
    web.wait_status("enforced", WAIT, |s| {
        s.drops.get("denied").copied().unwrap_or(0) > 0 || s.policy_version == 2
    })
    .await;
    assert!(
        !delivered_once(&client, &mut web, 22, 50000).await,
        "the monitored flow is cut"
    );
    assert!(!delivered_once(&client, &mut web, 22, 50001).await);
    let status = web.status().await;
    assert!(
        status.drops.get("denied").copied().unwrap_or(0) >= 2,
        "{status:#?}"
    );
    assert_eq!(status.monitored, 1);

    // A segment in monitor mode: its default deny only counts.
    let segment_monitor = r#"
[segments]
clients = { tags = ["client"] }
web = { tags = ["web"], monitor = true }

[[rules]]
name = "https"
from = ["clients"]
to = ["web"]
ports = ["tcp/443"]
"#;
    server.set_policy(segment_monitor).await.unwrap();
    web.wait_status("version 3", WAIT, |s| s.policy_version == 3)
        .await;
    assert!(delivered_once(&client, &mut web, 5432, 50002).await);
    web.wait_status("default deny monitored", WAIT, |s| {
        s.monitored == 2 && s.rule_hits.get("monitor:web") == Some(&1)
    })
    .await;
    // Monitoring the receiver does not open the other direction.
    let mut client = client;
    assert!(!delivered_once(&web, &mut client, 443, 50003).await);
}

/// Version `k` of the 100: only tcp/(10000 + k) is allowed from the client
/// to the server, written two ways (deny rules around a broad allow, or one
/// narrow allow), plus unrelated filler rules; tcp/9999 is always denied.
fn version_text(k: u16) -> String {
    let port = 10000 + k;
    let mut text = String::from(
        "[segments]\nclients = { tags = [\"client\"] }\nservers = { tags = [\"server\"] }\n",
    );
    for i in 0..20 {
        text.push_str(&format!("filler{i} = {{ tags = [\"filler{i}\"] }}\n"));
    }
    if k.is_multiple_of(2) {
        text.push_str("\n[[rules]]\nname = \"never-9999\"\nfrom = [\"clients\"]\nto = [\"servers\"]\nports = [\"tcp/9999\"]\naction = \"deny\"\n");
        text.push_str(&format!(
            "\n[[rules]]\nname = \"below\"\nfrom = [\"clients\"]\nto = [\"servers\"]\nports = [\"tcp/10000-{}\"]\naction = \"deny\"\n",
            port - 1
        ));
        text.push_str(&format!(
            "\n[[rules]]\nname = \"above\"\nfrom = [\"clients\"]\nto = [\"servers\"]\nports = [\"tcp/{}-10200\"]\naction = \"deny\"\n",
            port + 1
        ));
        text.push_str("\n[[rules]]\nname = \"broad\"\nfrom = [\"clients\"]\nto = [\"servers\"]\nports = [\"tcp/9000-10200\"]\n");
    } else {
        text.push_str(&format!(
            "\n[[rules]]\nname = \"only-v{k}\"\nfrom = [\"clients\"]\nto = [\"servers\"]\nports = [\"tcp/{port}\"]\n"
        ));
    }
    for i in 0..40 {
        text.push_str(&format!(
            "\n[[rules]]\nname = \"filler-rule-{i}\"\nfrom = [\"filler{}\"]\nto = [\"filler{}\"]\nports = [\"tcp/{}\"]\n",
            i % 20,
            (i + 1) % 20,
            1000 + i
        ));
    }
    text.push_str("\n[[tests]]\nfrom = \"tag:client\"\nto = \"tag:server\"\nport = \"tcp/9999\"\nexpect = \"deny\"\n");
    text.push_str(&format!(
        "\n[[tests]]\nfrom = \"tag:client\"\nto = \"tag:server\"\nport = \"tcp/{port}\"\nexpect = \"allow\"\n"
    ));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_versions_under_traffic_never_deliver_a_denied_packet() {
    let server = TestServer::start(None).await;
    let client = agent(&server, "client", "c1").await;
    let mut target = agent(&server, "server", "s1").await;
    let first = server.set_policy(&version_text(1)).await.unwrap();
    until_delivered(&client, &mut target, 10001).await;
    let base = first - 1;

    // Traffic: SYNs to the ports of the versions around
    // the newest one set, and to tcp/9999, while the versions change.
    let (src, dst) = (client.address, target.address);
    let (set_tx, set_rx) = tokio::sync::watch::channel(1u16);
    let sender = {
        let client_tun = client.tun.to_dataplane.clone();
        tokio::spawn(async move {
            let mut sport = 1024u16;
            let mut sent = 0u64;
            loop {
                let newest = *set_rx.borrow();
                if newest > 100 {
                    break;
                }
                for k in newest.saturating_sub(2).max(1)..=(newest + 2).min(100) {
                    for port in [10000 + k, 9999] {
                        // A new flow each time, and one established flow
                        // per port (same 5-tuple), which a new version
                        // that denies it must cut.
                        sport = sport.wrapping_add(1).max(1024);
                        for from_port in [sport, port - 5000] {
                            if client_tun
                                .send(tcp(src, dst, from_port, port, SYN))
                                .await
                                .is_err()
                            {
                                return sent;
                            }
                            sent += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            sent
        })
    };

    // Receiver: every delivered packet, in delivery order.
    let started = Instant::now();
    let mut delivered: Vec<u16> = Vec::new();
    for k in 2..=100u16 {
        let version = server.set_policy(&version_text(k)).await.unwrap();
        assert_eq!(version, base + u64::from(k));
        set_tx.send_replace(k);
        // Collect while the version settles.
        let settle = Instant::now() + Duration::from_millis(60);
        while let Some(p) = target
            .receive(settle.saturating_duration_since(Instant::now()))
            .await
        {
            delivered.push(dst_port(&p));
        }
    }
    target
        .wait_status("last version applied", WAIT, |s| {
            s.policy_version == base + 100
        })
        .await;
    let tail = Instant::now() + Duration::from_millis(300);
    while let Some(p) = target
        .receive(tail.saturating_duration_since(Instant::now()))
        .await
    {
        delivered.push(dst_port(&p));
    }
    set_tx.send_replace(101);
    let sent = sender.await.unwrap();
    let took = started.elapsed();

    // No packet to 9999, nothing outside the versions' ports, and the
    // version of what was delivered never goes back: a packet allowed only
    // by version j is never delivered after one allowed only by k > j.
    assert!(
        !delivered.contains(&9999),
        "a packet to tcp/9999 was delivered"
    );
    let versions: Vec<u16> = delivered
        .iter()
        .map(|&port| {
            assert!(
                (10001..=10100).contains(&port),
                "unexpected port {port} delivered"
            );
            port - 10000
        })
        .collect();
    for pair in versions.windows(2) {
        assert!(
            pair[0] <= pair[1],
            "tcp/{} (version {}) was delivered after tcp/{} (version {}): a packet was judged by a version no longer in force",
            10000 + pair[1],
            pair[1],
            10000 + pair[0],
            pair[0]
        );
    }
    let mut seen = versions.clone();
    seen.dedup();
    eprintln!(
        "100 versions in {took:?}: {sent} packets sent, {} delivered, {} versions seen delivering",
        versions.len(),
        seen.len()
    );
    assert!(
        seen.len() >= 50,
        "traffic must have flowed under most versions; saw {}",
        seen.len()
    );
    let status = target.status().await;
    assert!(
        status.drops.get("denied").copied().unwrap_or(0) > 0,
        "{status:#?}"
    );
}

mod observe;
