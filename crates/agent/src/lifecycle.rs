//! The daemon's side of device trust: rotating the WireGuard key and the
//! client certificate before the node key expires, and reporting posture on
//! every connect and whenever it changes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::sync::{mpsc, watch};
use x25519_dalek::StaticSecret;
use ztmesh_proto::v1;
use ztmesh_rpc::v1::control_client::ControlClient;

use crate::control::{ControlConfig, Credentials};
use crate::enroll::NewKeys;
use crate::keys::DeviceKeys;
use crate::netmap::{NetMap, SelfNode};
use crate::posture::PostureReport;
use crate::state::StateDir;

/// Certificates of never-expiring node keys are renewed on this schedule.
const NEVER_EXPIRING_CERT_SECONDS: i64 = 365 * 24 * 3600;

/// Where posture comes from (the real system, or a test's fake).
pub type PostureSource = Arc<dyn Fn() -> PostureReport + Send + Sync>;

/// When the node key should be rotated (Unix seconds): two thirds of the
/// way from issue to expiry. `None` before the first network map.
pub fn rotation_due_at(node: &SelfNode) -> Option<i64> {
    if node.id.is_empty() || node.key_issued_at <= 0 {
        return None;
    }
    let issued = node.key_issued_at;
    let end = if node.key_expires_at == 0 {
        issued.saturating_add(NEVER_EXPIRING_CERT_SECONDS)
    } else {
        node.key_expires_at
    };
    let lifetime = end.saturating_sub(issued).max(0);
    Some(issued.saturating_add(lifetime.saturating_mul(2) / 3))
}

/// Current Unix time in seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Rotates keys whenever they are due, forever. A new WireGuard key goes
/// to the data plane through `rekeys`; the new certificate replaces the
/// control client's credentials; both are saved in `state` first.
pub async fn rotation_loop(
    state: StateDir,
    config: ControlConfig,
    mut netmap: watch::Receiver<NetMap>,
    rekeys: mpsc::Sender<StaticSecret>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let node = netmap.borrow_and_update().self_node.clone();
        let Some(due) = rotation_due_at(&node) else {
            if netmap.changed().await.is_err() {
                return;
            }
            continue;
        };
        let now = unix_now();
        if due > now {
            let wait = Duration::from_secs(u64::try_from(due - now).unwrap_or(0));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = netmap.changed() => if changed.is_err() { return; },
            }
            continue;
        }
        match rotate_once(&state, &config, &rekeys).await {
            Ok(expires_at) => {
                tracing::info!(
                    expires_at,
                    "rotated the WireGuard key and client certificate"
                );
                backoff = Duration::from_secs(1);
                // Wait for the server's map to show the new key's issue time,
                // or the same schedule would rotate again at once.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while netmap.borrow().self_node.key_issued_at == node.key_issued_at {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => break,
                        changed = netmap.changed() => if changed.is_err() { return; },
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "key rotation failed; the current key stays in use");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// One rotation: new keys made here, public halves and a CSR sent, the
/// answer saved, then the switch. Returns the new expiry.
async fn rotate_once(
    state: &StateDir,
    config: &ControlConfig,
    rekeys: &mpsc::Sender<StaticSecret>,
) -> Result<i64> {
    let NewKeys {
        wireguard,
        identity,
        csr_pem,
    } = NewKeys::generate()?;
    let response = ControlClient::new(config.channel().await?)
        .rotate_key(v1::RotateKeyRequest {
            wireguard_public_key: x25519_dalek::PublicKey::from(&wireguard)
                .as_bytes()
                .to_vec(),
            csr_pem,
        })
        .await
        .map_err(|s| anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let keys = DeviceKeys {
        wireguard: wireguard.clone(),
        identity_key_pem: identity.serialize_pem(),
        client_cert_pem: response.client_cert_pem.clone(),
        ca_cert_pem: config.ca_pem.clone(),
    };
    // The server already uses the new key: switch even if saving fails,
    // but say loudly that a restart would then need a new enrollment.
    let saved = keys.save(state).and_then(|()| {
        let mut enrollment = state
            .enrollment()?
            .ok_or_else(|| anyhow!("the enrollment record is missing"))?;
        enrollment.key_expires_at = response.key_expires_at;
        state.save_enrollment(&enrollment)
    });
    if let Err(e) = saved {
        tracing::error!(error = %format!("{e:#}"), "saving the rotated keys failed; this daemon keeps working, but after a restart the device must enroll again");
    }
    if let Ok(mut credentials) = config.credentials.write() {
        *credentials = Credentials {
            cert_pem: response.client_cert_pem,
            key_pem: keys.identity_key_pem.clone(),
        };
    }
    rekeys
        .send(wireguard)
        .await
        .map_err(|_| anyhow!("the data plane stopped"))?;
    Ok(response.key_expires_at)
}

/// Reports posture on every new control session and whenever it changes
/// (checked every `interval`), forever.
pub async fn posture_loop(
    config: ControlConfig,
    source: PostureSource,
    interval: Duration,
    mut sessions: watch::Receiver<u64>,
) {
    let mut last_sent: Option<(PostureReport, u64)> = None;
    loop {
        let session = *sessions.borrow_and_update();
        let probe = Arc::clone(&source);
        let report = tokio::task::spawn_blocking(move || probe())
            .await
            .unwrap_or_default();
        let current = Some((report.clone(), session));
        if session > 0 && last_sent != current {
            match send_posture(&config, &report).await {
                Ok(failing) => {
                    if failing.is_empty() {
                        tracing::debug!(?report, "posture reported");
                    } else {
                        tracing::info!(failing = ?failing, "posture reported; some posture checks fail, so some segments are out of reach");
                    }
                    last_sent = current;
                }
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "posture report failed; retrying")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            changed = sessions.changed() => if changed.is_err() { return; },
        }
    }
}

/// Sends one report; returns the failing checks as `segment/posture/check: detail`.
async fn send_posture(config: &ControlConfig, report: &PostureReport) -> Result<Vec<String>> {
    let response = ControlClient::new(config.channel().await?)
        .report_posture(v1::PostureReport {
            os: report.os.clone(),
            os_version: report.os_version.clone(),
            kernel: report.kernel.clone(),
            daemon_version: report.daemon_version.clone(),
            hostname: report.hostname.clone(),
            disk_encrypted: report.disk_encrypted,
            firewall: report.firewall,
            os_name: report.os_name.clone(),
        })
        .await
        .map_err(|s| anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    Ok(response
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}/{}/{}: {}", c.segment, c.posture, c.check, c.detail))
        .collect())
}

/// The first retry of an endpoint report the server did not take; each
/// next one waits twice as long, up to [`ENDPOINT_RETRY_MAX`] (a report
/// the server refuses as invalid fails the same way every time).
const ENDPOINT_RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between two tries of an endpoint report.
const ENDPOINT_RETRY_MAX: Duration = Duration::from_secs(300);

/// Reports where this daemon can be reached (the public endpoint learned
/// over STUN, and the interface candidates) to the server whenever either
/// changes and on every new control session (a reconnect resets the
/// server's record to the observed address). Each accepted report bumps
/// `reported_tx`: the data plane then starts handshakes with every peer on
/// every path while the server hands the new endpoints to those peers.
/// A report the server did not take is tried again after 5 s, then less
/// and less often ([`next_retry`]); each new error is logged as a warning.
pub async fn endpoint_loop(
    config: ControlConfig,
    mut public: watch::Receiver<Option<std::net::SocketAddr>>,
    mut local: watch::Receiver<Vec<std::net::SocketAddr>>,
    mut sessions: watch::Receiver<u64>,
    reported_tx: watch::Sender<u64>,
) {
    type Reach = (Option<std::net::SocketAddr>, Vec<std::net::SocketAddr>);
    let mut reported: Option<(Reach, u64)> = None;
    // After a failed report: when to try again, and the error last told.
    let mut retry: Option<Duration> = None;
    let mut told: Option<String> = None;
    loop {
        let session = *sessions.borrow_and_update();
        let current: Reach = (
            *public.borrow_and_update(),
            local.borrow_and_update().clone(),
        );
        let worth = current.0.is_some() || !current.1.is_empty();
        if worth && session > 0 && reported.as_ref() != Some(&(current.clone(), session)) {
            match send_endpoint(&config, &current).await {
                Ok(response) => {
                    if response.accepted {
                        // The server now tells the peers; our side probes
                        // them at the same moment (hole punching needs both).
                        reported_tx.send_modify(|n| *n += 1);
                    } else {
                        tracing::info!(endpoint = ?current.0, reason = %response.reason, "the server did not take the public endpoint");
                    }
                    reported = Some((current, session));
                    retry = None;
                    told = None;
                }
                Err(e) => {
                    let after = next_retry(retry);
                    retry = Some(after);
                    let error = format!("{e:#}");
                    if told.as_ref() != Some(&error) {
                        tracing::warn!(%error, retry_in = ?after, "the server did not take this device's endpoints; peers may not reach it directly");
                        told = Some(error);
                    } else {
                        tracing::debug!(%error, retry_in = ?after, "reporting the endpoints failed again");
                    }
                }
            }
        }
        // Nothing to wait for but changes, unless a report failed: no
        // timer wakes an idle daemon for this.
        let again = async {
            match retry {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = again => {}
            changed = sessions.changed() => if changed.is_err() { return; },
            changed = public.changed() => if changed.is_err() { return; },
            changed = local.changed() => if changed.is_err() { return; },
        }
    }
}

/// The wait before the next try of an endpoint report, after one that
/// waited `last` (`None`: the first failure).
fn next_retry(last: Option<Duration>) -> Duration {
    last.map_or(ENDPOINT_RETRY_FIRST, |last| {
        (last * 2).min(ENDPOINT_RETRY_MAX)
    })
}

async fn send_endpoint(
    config: &ControlConfig,
    (public, candidates): &(Option<std::net::SocketAddr>, Vec<std::net::SocketAddr>),
) -> Result<v1::EndpointReportResponse> {
    Ok(ControlClient::new(config.channel().await?)
        .report_endpoint(v1::EndpointReport {
            public_endpoint: public.map(|p| p.to_string()).unwrap_or_default(),
            candidates: candidates.iter().map(ToString::to_string).collect(),
        })
        .await?
        .into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_due_two_thirds_through() {
        let mut node = SelfNode {
            id: "d".into(),
            key_issued_at: 1000,
            key_expires_at: 1900,
            ..SelfNode::default()
        };
        assert_eq!(rotation_due_at(&node), Some(1600));
        node.key_expires_at = 0;
        assert_eq!(
            rotation_due_at(&node),
            Some(1000 + NEVER_EXPIRING_CERT_SECONDS * 2 / 3)
        );
        node.id.clear();
        assert_eq!(rotation_due_at(&node), None);
    }

    #[test]
    fn a_refused_endpoint_report_is_tried_again_less_and_less_often() {
        let mut waits = Vec::new();
        let mut last = None;
        for _ in 0..9 {
            let next = next_retry(last);
            waits.push(next.as_secs());
            last = Some(next);
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }
}
