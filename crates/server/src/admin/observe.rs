//! Seeing what the network does: flow records reported by daemons, and the
//! live event stream.

use std::pin::Pin;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use ztmesh_proto::v1;

use super::AdminService;
use super::audit::key_still_usable;
use crate::error::internal;
use crate::events::KINDS;
use crate::store::{FlowQuery, unix_now};

/// Records listed when the request gives no limit, and the most listed.
const DEFAULT_FLOWS: u32 = 100;
const MAX_FLOWS: u32 = 10_000;
/// How often a watching key is checked again.
const KEY_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// Default look-back of `ListFlows`.
const DEFAULT_SINCE_SECONDS: i64 = 3600;

/// The stream type of `WatchEvents`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

impl AdminService {
    pub(super) async fn list_flows_impl(
        &self,
        req: v1::ListFlowsRequest,
    ) -> Result<v1::ListFlowsResponse, Status> {
        let device_id = match req.device.as_str() {
            "" => None,
            name => Some(self.find_device(name).await?.id),
        };
        let query = FlowQuery {
            device_id,
            denied_only: req.denied,
            since: match req.since {
                0 => unix_now() - DEFAULT_SINCE_SECONDS,
                since => since,
            },
            limit: match req.limit {
                0 => DEFAULT_FLOWS,
                n => n.min(MAX_FLOWS),
            },
        };
        let rows = self.store.flow_records(&query).await.map_err(internal)?;
        let state = self.hub.current();
        let name_of = |id: &str| {
            state
                .devices()
                .iter()
                .find(|d| d.id == id)
                .map_or_else(|| id.to_owned(), |d| d.name.clone())
        };
        let flows = rows
            .into_iter()
            .map(|r| v1::Flow {
                device: name_of(&r.device_id),
                at: r.at,
                record: Some(v1::FlowRecord {
                    src: r.src,
                    dst: r.dst,
                    proto: r.proto,
                    src_port: r.src_port,
                    dst_port: r.dst_port,
                    rule: r.rule,
                    verdict: r.verdict,
                    packets: r.packets,
                    bytes: r.bytes,
                    first_seen: r.first_seen,
                    last_seen: r.last_seen,
                }),
            })
            .collect();
        Ok(v1::ListFlowsResponse { flows })
    }

    /// Streams events; the key `key_id` is checked again every second and
    /// the stream ends when it is revoked or expires.
    pub(super) fn watch_events_impl(
        &self,
        key_id: String,
        req: v1::WatchEventsRequest,
    ) -> Result<EventStream, Status> {
        if let Some(unknown) = req.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
            return Err(Status::invalid_argument(format!(
                "unknown event kind `{}`; kinds: {}",
                unknown.escape_debug(),
                KINDS.join(", ")
            )));
        }
        let mut events = self.hub.events().subscribe();
        let mut closing = self.hub.closing();
        let kinds = req.kinds;
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut recheck = tokio::time::interval(KEY_RECHECK);
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    _ = recheck.tick() => {
                        if let Err(status) = key_still_usable(&store, &key_id, "event stream").await {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        continue;
                    }
                    () = tx.closed() => return,
                    _ = closing.changed() => return,
                };
                let message = match event {
                    Ok(event) if kinds.is_empty() || kinds.contains(&event.kind) => event,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => v1::Event {
                        at: unix_now(),
                        kind: "events.missed".into(),
                        object: String::new(),
                        detail: format!(
                            "{missed} events were missed because this watcher read too slowly"
                        ),
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}
