//! The event bus behind the Admin `WatchEvents` stream: devices connecting
//! and disconnecting, posture reports, policy versions, enrollments and
//! revocations in this server process.

use tokio::sync::broadcast;
use ztmesh_proto::v1;

use crate::store::unix_now;

/// Events kept for slow watchers before they miss some (and are told so).
const BACKLOG: usize = 1024;

/// Publishes events to every watcher; publishing never waits.
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<v1::Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Events {
    /// Publishes an event of `kind` (e.g. `device.connected`) about `object`.
    pub fn publish(&self, kind: &str, object: &str, detail: impl Into<String>) {
        // No watcher is not an error.
        let _ = self.sender.send(v1::Event {
            at: unix_now(),
            kind: kind.to_owned(),
            object: object.to_owned(),
            detail: detail.into(),
        });
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<v1::Event> {
        self.sender.subscribe()
    }
}

/// Every event kind, for the API's filter check and documentation.
pub const KINDS: [&str; 8] = [
    "device.connected",
    "device.disconnected",
    "device.enrolled",
    "device.approved",
    "device.revoked",
    "device.expired",
    "device.posture",
    "policy.version",
];
