//! Admin calls on the audit log: a filtered listing, and a stream that sends
//! the recent records and then new ones as they are written.
//!
//! The stream reads the table, never an in-memory copy: it wakes when this
//! process commits an audit record (the store's signal) and also every
//! second, which picks up records written by other server replicas
//! sharing the database. Each read looks back a few seconds and skips ids
//! already sent, so a transaction that committed late is not missed.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use ztmesh_proto::v1;

use super::AdminService;
use crate::error::internal;
use crate::store::{Actor, AuditFilter, AuditRecord, Store, unix_now};

/// The WatchAudit response stream.
pub type AuditStream = Pin<Box<dyn Stream<Item = Result<v1::AuditRecord, Status>> + Send>>;

/// Records a listing returns when no limit is given, and at most.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
/// Records a stream starts with when no backlog is given.
const DEFAULT_BACKLOG: u32 = 20;
/// How often a stream reads the table without a local signal.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How far back each read looks for records committed late.
const LOOKBACK_SECONDS: i64 = 10;
/// Longest actor or action filter accepted.
const MAX_FILTER_LEN: usize = 256;

impl AdminService {
    pub(super) async fn list_audit_impl(
        &self,
        req: v1::ListAuditRequest,
    ) -> Result<v1::ListAuditResponse, Status> {
        let filter = audit_filter(req.since, req.actor, req.action)?;
        let limit = bounded(req.limit, DEFAULT_LIMIT);
        let records = self
            .store
            .audit_records(&filter, limit)
            .await
            .map_err(internal)?;
        Ok(v1::ListAuditResponse {
            records: records.into_iter().map(record_message).collect(),
        })
    }

    pub(super) async fn watch_audit_impl(
        &self,
        actor: &Actor,
        req: v1::WatchAuditRequest,
    ) -> Result<AuditStream, Status> {
        let filter = audit_filter(req.since, req.actor, req.action)?;
        let now = unix_now();
        // What the look-back window holds now is history, not news: mark it
        // seen before reading the backlog, so the first poll does not send
        // the part of it that the backlog left out.
        let window = AuditFilter {
            since: now.saturating_sub(LOOKBACK_SECONDS).max(filter.since),
            ..filter.clone()
        };
        let seen = self
            .store
            .audit_records_from(&window, MAX_LIMIT)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|r| (r.id, r.at))
            .collect();
        let backlog = self
            .store
            .audit_records(&filter, bounded(req.backlog, DEFAULT_BACKLOG))
            .await
            .map_err(internal)?;
        let (tx, rx) = mpsc::channel(64);
        let watch = Watch {
            store: self.store.clone(),
            key_id: actor
                .id
                .strip_prefix("apikey:")
                .unwrap_or_default()
                .to_owned(),
            filter,
            seen,
            newest: now,
        };
        let closing = self.hub.closing();
        tokio::spawn(watch.run(backlog, tx, closing));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// One WatchAudit stream's position in the log.
struct Watch {
    store: Store,
    /// The watching key: checked on every read, so a stream ends when its
    /// key is revoked or expires.
    key_id: String,
    filter: AuditFilter,
    /// Ids sent whose time is still inside the look-back window.
    seen: HashMap<String, i64>,
    /// Time of the newest record sent (or the stream's start).
    newest: i64,
}

impl Watch {
    async fn run(
        mut self,
        backlog: Vec<AuditRecord>,
        tx: mpsc::Sender<Result<v1::AuditRecord, Status>>,
        mut closing: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut signal = self.store.audit_signal();
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for record in backlog {
            self.seen.insert(record.id.clone(), record.at);
            if tx.send(Ok(record_message(record))).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                changed = signal.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = poll.tick() => {}
                _ = closing.changed() => {
                    let _ = tx.send(Err(Status::unavailable("the server is shutting down; reconnect later"))).await;
                    return;
                }
                () = tx.closed() => return,
            }
            if let Err(status) = key_still_usable(&self.store, &self.key_id, "audit stream").await {
                let _ = tx.send(Err(status)).await;
                return;
            }
            let from = self
                .newest
                .saturating_sub(LOOKBACK_SECONDS)
                .max(self.filter.since);
            let filter = AuditFilter {
                since: from,
                ..self.filter.clone()
            };
            let records = match self.store.audit_records_from(&filter, MAX_LIMIT).await {
                Ok(records) => records,
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return;
                }
            };
            if !self.send(records, &tx).await {
                return;
            }
            self.seen.retain(|_, at| *at >= from);
        }
    }

    /// Sends the records not sent before; false when the client is gone.
    async fn send(
        &mut self,
        records: Vec<AuditRecord>,
        tx: &mpsc::Sender<Result<v1::AuditRecord, Status>>,
    ) -> bool {
        for record in records {
            if self.seen.contains_key(&record.id) {
                continue;
            }
            self.seen.insert(record.id.clone(), record.at);
            self.newest = self.newest.max(record.at);
            if tx.send(Ok(record_message(record))).await.is_err() {
                return false;
            }
        }
        true
    }
}

fn audit_filter(since: i64, actor: String, action: String) -> Result<AuditFilter, Status> {
    if since < 0 {
        return Err(Status::invalid_argument(
            "since must be Unix seconds (0 = from the beginning)",
        ));
    }
    if actor.len() > MAX_FILTER_LEN || action.len() > MAX_FILTER_LEN {
        return Err(Status::invalid_argument(format!(
            "the actor and action filters must be at most {MAX_FILTER_LEN} bytes"
        )));
    }
    Ok(AuditFilter {
        since,
        actor,
        action,
    })
}

/// `requested`, or `default` for 0, at most [`MAX_LIMIT`].
fn bounded(requested: u32, default: u32) -> u32 {
    match requested {
        0 => default,
        n => n.min(MAX_LIMIT),
    }
}

fn record_message(r: AuditRecord) -> v1::AuditRecord {
    v1::AuditRecord {
        id: r.id,
        at: r.at,
        actor: r.actor,
        role: r.role,
        action: r.action,
        object: r.object,
        before: r.before,
        after: r.after,
        source: r.source,
    }
}

/// Unauthenticated once the watching key `key_id` is revoked or expired:
/// long streams check it as they go, so a revoked key stops seeing data.
pub(super) async fn key_still_usable(
    store: &Store,
    key_id: &str,
    what: &str,
) -> Result<(), Status> {
    let usable = store
        .api_key(key_id)
        .await
        .map_err(internal)?
        .is_some_and(|(_, key)| key.is_usable(unix_now()));
    if usable {
        Ok(())
    } else {
        Err(Status::unauthenticated(format!(
            "API key `{key_id}` was revoked or expired; the {what} ends. Ask an owner or admin for a new key (`ztmesh admin api-keys create`)"
        )))
    }
}
