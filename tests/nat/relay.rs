//! The relay over real TLS on loopback: enrolled devices reach each other
//! through it by WireGuard key; a certificate the network CA did not issue
//! gets nowhere; a revoked device is cut off within seconds and cannot
//! come back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use ztmesh_agent::keys::DeviceKeys;
use ztmesh_e2e::{TestAgent, TestServer, free_local_addr};
use ztmesh_relay::Frame;
use ztmesh_relay::client::{self, Target};

struct Client {
    up: watch::Receiver<client::Link>,
    to_relay: mpsc::Sender<Frame>,
    from_relay: mpsc::Receiver<Frame>,
    _task: tokio::task::JoinHandle<()>,
}

fn connect(address: &str, ca_pem: &str, cert_pem: String, key_pem: String) -> Client {
    let (_target_tx, target) = watch::channel(Some(Target {
        address: address.to_owned(),
        ca_pem: ca_pem.to_owned(),
    }));
    let (in_tx, from_relay) = mpsc::channel(16);
    let (to_relay, out_rx) = mpsc::channel(16);
    let (up_tx, up) = watch::channel(client::Link::Down);
    let credentials: client::Credentials = Arc::new(move || (cert_pem.clone(), key_pem.clone()));
    let task = tokio::spawn(async move {
        // Keep the target's sender alive as long as the client runs.
        let _keep = _target_tx;
        client::run(target, credentials, in_tx, out_rx, up_tx).await;
    });
    Client {
        up,
        to_relay,
        from_relay,
        _task: task,
    }
}

async fn wait_up(client: &mut Client, want: bool, within: Duration) -> bool {
    tokio::time::timeout(within, client.up.wait_for(|up| up.is_up() == want))
        .await
        .is_ok_and(|r| r.is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_carries_packets_between_enrolled_devices_only() {
    let relay_addr = free_local_addr();
    let server = TestServer::start_with(None, |c| c.relay_listen = Some(relay_addr)).await;
    let mut keys = Vec::new();
    for name in ["relay-a", "relay-b"] {
        let agent = TestAgent::join(&server.token(&["web"], false, 0).await, name)
            .await
            .unwrap();
        keys.push(DeviceKeys::load(&agent.state).unwrap());
        // The daemon would hold the relay itself; the test speaks for it.
        agent.stop().await;
    }
    let address = relay_addr.to_string();
    let ca = keys[0].ca_cert_pem.clone();
    let key_of = |k: &DeviceKeys| k.public_key().to_bytes();
    let (a_key, b_key) = (key_of(&keys[0]), key_of(&keys[1]));
    let mut a = connect(
        &address,
        &ca,
        keys[0].client_cert_pem.clone(),
        keys[0].identity_key_pem.clone(),
    );
    let mut b = connect(
        &address,
        &ca,
        keys[1].client_cert_pem.clone(),
        keys[1].identity_key_pem.clone(),
    );
    assert!(
        wait_up(&mut a, true, Duration::from_secs(5)).await,
        "a did not connect"
    );
    assert!(
        wait_up(&mut b, true, Duration::from_secs(5)).await,
        "b did not connect"
    );
    // Over TLS first; UDP once the relay has answered a registration.
    for (name, c) in [("a", &mut a), ("b", &mut b)] {
        let on_udp = tokio::time::timeout(
            Duration::from_secs(8),
            c.up.wait_for(|l| matches!(l, client::Link::Udp { .. })),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(on_udp, "{name} never moved to UDP on loopback");
    }

    // a -> b by b's WireGuard key; b sees it as from a's key.
    a.to_relay
        .send(Frame {
            key: b_key,
            payload: b"through the relay".to_vec(),
        })
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), b.from_relay.recv())
        .await
        .expect("nothing relayed within 5 s")
        .unwrap();
    assert_eq!(got.key, a_key);
    assert_eq!(got.payload, b"through the relay");

    // A certificate the network CA did not issue gets no connection.
    let stranger = rcgen::generate_simple_self_signed(vec!["stranger".to_owned()]).unwrap();
    let mut c = connect(
        &address,
        &ca,
        stranger.cert.pem(),
        stranger.signing_key.serialize_pem(),
    );
    assert!(
        !wait_up(&mut c, true, Duration::from_secs(2)).await,
        "a self-signed certificate was let in"
    );

    // Revoked: cut off within the re-check interval (and a bit), and it
    // cannot come back.
    server.revoke("relay-b").await.unwrap();
    assert!(
        wait_up(&mut b, false, ztmesh_relay::server::RECHECK * 3).await,
        "the revoked device kept its relay connection"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!b.up.borrow().is_up(), "the revoked device reconnected");
    // And nothing reaches it any more.
    a.to_relay
        .send(Frame {
            key: b_key,
            payload: b"after revocation".to_vec(),
        })
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b.from_relay.recv())
            .await
            .is_err()
    );
}
