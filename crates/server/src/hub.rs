//! Change fan-out: one shared [`NetworkState`], rebuilt once per change and
//! published to every device stream, plus who is online.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::sync::watch;
use ztmesh_policy::Policy;

use crate::events::Events;
use crate::netmap::NetworkState;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// Publishes network state changes to the device streams.
#[derive(Clone)]
pub struct Hub {
    store: Store,
    sender: Arc<watch::Sender<Arc<NetworkState>>>,
    online: Arc<Mutex<HashMap<String, usize>>>,
    reload_lock: Arc<tokio::sync::Mutex<()>>,
    closing: Arc<watch::Sender<bool>>,
    events: Events,
    telemetry: Telemetry,
}

impl Hub {
    /// Builds the first state from the store.
    pub async fn new(store: Store) -> Result<Hub> {
        let state = load(&store).await?;
        let (sender, _) = watch::channel(state);
        Ok(Hub {
            store,
            sender: Arc::new(sender),
            online: Arc::default(),
            reload_lock: Arc::default(),
            closing: Arc::new(watch::channel(false).0),
            events: Events::default(),
            telemetry: Telemetry::default(),
        })
    }

    /// The event bus of this server process.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The daemons' latest reported counters.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Rebuilds the state from the store and publishes it. Called after
    /// every change; streams compute their own deltas from it.
    pub async fn reload(&self) -> Result<()> {
        // Serialised so that an older rebuild can never overwrite a newer one.
        let _guard = self.reload_lock.lock().await;
        let state = load(&self.store).await?;
        self.sender.send_replace(state);
        Ok(())
    }

    /// The state in force.
    pub fn current(&self) -> Arc<NetworkState> {
        Arc::clone(&self.sender.borrow())
    }

    /// Rebuilds the state whenever a node key expires or a rule's time
    /// window opens or closes (checked every 500 ms), so expired devices leave
    /// every peer list, and timed rules take effect, within about a second.
    /// Runs until the server closes.
    pub fn spawn_change_timer(&self) {
        let hub = self.clone();
        let mut closing = self.closing();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = closing.changed() => return,
                }
                let due = hub
                    .current()
                    .next_change()
                    .is_some_and(|at| at <= crate::store::unix_now());
                if due && let Err(e) = hub.reload().await {
                    tracing::warn!(error = %format!("{e:#}"), "rebuilding the network after a key expiry or a rule's time window failed; retrying");
                }
            }
        });
    }

    /// A receiver that sees every published state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<NetworkState>> {
        self.sender.subscribe()
    }

    /// Tells every device stream to end (server shutdown), so a graceful
    /// shutdown does not wait for streams that never finish.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Becomes `true` when the server shuts down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Marks a device online until the returned guard is dropped; publishes
    /// `device.connected` now and `device.disconnected` then.
    pub fn connect(&self, device_id: &str, name: &str, remote: &str) -> OnlineGuard {
        if let Ok(mut online) = self.online.lock() {
            *online.entry(device_id.to_owned()).or_default() += 1;
        }
        self.events
            .publish("device.connected", name, format!("from {remote}"));
        OnlineGuard {
            online: Arc::clone(&self.online),
            device_id: device_id.to_owned(),
            name: name.to_owned(),
            events: self.events.clone(),
        }
    }

    /// Whether a device has a live stream.
    pub fn is_online(&self, device_id: &str) -> bool {
        self.online
            .lock()
            .map(|o| o.get(device_id).copied().unwrap_or(0) > 0)
            .unwrap_or(false)
    }
}

/// Keeps a device marked online while its stream lives.
pub struct OnlineGuard {
    online: Arc<Mutex<HashMap<String, usize>>>,
    device_id: String,
    name: String,
    events: Events,
}

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        if let Ok(mut online) = self.online.lock()
            && let Some(count) = online.get_mut(&self.device_id)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                online.remove(&self.device_id);
            }
        }
        self.events
            .publish("device.disconnected", &self.name, String::new());
    }
}

async fn load(store: &Store) -> Result<Arc<NetworkState>> {
    let devices = store.devices().await.context("loading devices")?;
    let (policy, version) = match store.latest_policy().await.context("loading the policy")? {
        Some(record) => {
            // A stored policy was validated when it was set; if it no longer
            // parses (a newer server with stricter rules), fail closed.
            let policy = Policy::parse(&record.text).unwrap_or_else(|e| {
                tracing::error!(version = record.version, error = %e, "stored policy no longer parses; enforcing an empty policy");
                Policy::empty()
            });
            (policy, record.version)
        }
        None => (Policy::empty(), 0),
    };
    let users = store.users().await.context("loading users")?;
    Ok(NetworkState::new(
        devices,
        users,
        policy,
        version,
        crate::store::unix_now(),
    ))
}
