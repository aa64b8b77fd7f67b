//! The flow log: the data plane hands its filter's flow events and counters
//! over once a second without ever waiting (a full queue drops the batch and
//! counts it); this task aggregates them and reports to the server at most
//! once per interval, with at most [`MAX_RECORDS`] records a report.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use ztmesh_filter::{FlowEvent, FlowVerdict};
use ztmesh_proto::v1;
use ztmesh_rpc::v1::control_client::ControlClient;

use crate::control::ControlConfig;

/// Batches waiting for the reporter; more are dropped, never waited for.
pub const BATCH_QUEUE: usize = 4;
/// Records sent per report, at most.
pub const MAX_RECORDS: usize = 500;
/// Distinct records aggregated per interval, at most (the rest are counted lost).
const MAX_AGGREGATED: usize = 4096;
/// How long one report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The filter's counters at one moment (they only grow).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Policy version of the filter in force.
    pub policy_version: u64,
    /// New flows decided by each rule (names shared with the filter: the
    /// data plane copies no string, and takes the list anew only when a
    /// count changed; equal snapshots share it).
    pub rule_hits: Arc<[(Arc<str>, u64)]>,
    /// Drops by reason.
    pub drops: Vec<(&'static str, u64)>,
    /// Inbound packets accepted.
    pub accepted_inbound: u64,
    /// New flows passed by monitored deny rules.
    pub monitored: u64,
    /// Flow events lost before reaching the reporter.
    pub events_lost: u64,
    /// Bytes received and sent over the current peers' tunnels.
    pub rx_bytes: u64,
    /// See `rx_bytes`.
    pub tx_bytes: u64,
}

/// What the data plane hands over once a second.
#[derive(Debug, Clone, Default)]
pub struct FlowBatch {
    /// New inbound flow decisions since the last batch.
    pub events: Vec<FlowEvent>,
    /// Counters now.
    pub counters: CounterSnapshot,
}

/// Aggregation key: the 5-tuple, the rule and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    src_port: u16,
    dst_port: u16,
    rule: Option<String>,
    verdict: FlowVerdict,
}

#[derive(Debug, Clone, Copy)]
struct Totals {
    packets: u64,
    bytes: u64,
    first_seen: i64,
    last_seen: i64,
}

/// Records of one interval, plus what was lost.
#[derive(Debug, Default)]
pub struct Aggregator {
    records: HashMap<Key, Totals>,
    counters: CounterSnapshot,
    lost: u64,
    /// Counters and losses of the last report delivered.
    delivered: Option<(CounterSnapshot, u64)>,
}

impl Aggregator {
    /// Adds a batch seen at `now` (Unix seconds).
    pub fn add(&mut self, batch: FlowBatch, now: i64) {
        self.counters = batch.counters;
        for event in batch.events {
            let p = event.packet;
            let key = Key {
                src: p.src,
                dst: p.dst,
                proto: p.proto,
                src_port: p.src_port,
                dst_port: p.dst_port,
                rule: event.rule,
                verdict: event.verdict,
            };
            let full = self.records.len() >= MAX_AGGREGATED;
            match self.records.get_mut(&key) {
                Some(totals) => {
                    totals.packets += 1;
                    totals.bytes += u64::from(event.bytes);
                    totals.last_seen = now;
                }
                None if full => self.lost += 1,
                None => {
                    self.records.insert(
                        key,
                        Totals {
                            packets: 1,
                            bytes: u64::from(event.bytes),
                            first_seen: now,
                            last_seen: now,
                        },
                    );
                }
            }
        }
    }

    /// The report for this interval, and a fresh interval. Drops come
    /// first, then monitored flows, then accepted ones, busiest first; past
    /// [`MAX_RECORDS`] the rest are counted lost.
    pub fn take_report(&mut self, started_at: i64) -> v1::FlowReport {
        let mut records: Vec<(Key, Totals)> = self.records.drain().collect();
        records.sort_by(|(a, ta), (b, tb)| {
            rank(a.verdict)
                .cmp(&rank(b.verdict))
                .then(tb.packets.cmp(&ta.packets))
                .then(ta.first_seen.cmp(&tb.first_seen))
        });
        if records.len() > MAX_RECORDS {
            self.lost += (records.len() - MAX_RECORDS) as u64;
            records.truncate(MAX_RECORDS);
        }
        let c = &self.counters;
        v1::FlowReport {
            policy_version: c.policy_version,
            records: records.into_iter().map(record).collect(),
            // Only the rules that decided a flow. A policy has hundreds or
            // thousands of rules and a device meets few of them: every
            // rule's zero made each report tens of kilobytes, built and
            // encoded every two seconds while traffic flows (about 800,000
            // instructions and 1,200 allocations each, callgrind, the
            // bench's 736-rule filter). A rule left out has no hits.
            rule_hits: named(c.rule_hits.iter().filter(|(_, hits)| *hits > 0)),
            drops: named(&c.drops),
            accepted_inbound: c.accepted_inbound,
            monitored: c.monitored,
            records_lost: c.events_lost + self.lost,
            started_at,
            rx_bytes: c.rx_bytes,
            tx_bytes: c.tx_bytes,
        }
    }

    /// Whether a report now would tell the server anything it was not
    /// told by the last one delivered: records, or other counters.
    pub fn has_news(&self) -> bool {
        !self.records.is_empty()
            || self
                .delivered
                .as_ref()
                .is_none_or(|(counters, lost)| *counters != self.counters || *lost != self.lost)
    }

    /// The report taken last was delivered.
    pub fn delivered(&mut self) {
        self.delivered = Some((self.counters.clone(), self.lost));
    }

    /// Counts records of a report that could not be delivered.
    pub fn count_lost(&mut self, records: usize) {
        self.lost += records as u64;
    }
}

fn rank(verdict: FlowVerdict) -> u8 {
    match verdict {
        FlowVerdict::Dropped(_) => 0,
        FlowVerdict::Monitored => 1,
        FlowVerdict::Allowed => 2,
    }
}

fn record((key, totals): (Key, Totals)) -> v1::FlowRecord {
    v1::FlowRecord {
        src: key.src.to_string(),
        dst: key.dst.to_string(),
        proto: u32::from(key.proto),
        src_port: u32::from(key.src_port),
        dst_port: u32::from(key.dst_port),
        rule: key.rule.unwrap_or_default(),
        verdict: key.verdict.as_str().to_owned(),
        packets: totals.packets,
        bytes: totals.bytes,
        first_seen: totals.first_seen,
        last_seen: totals.last_seen,
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An idle daemon (no records, same counters) reports this often.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Aggregates batches and reports them until the batch channel closes:
/// news (records, changed counters) at once, but at most once every
/// `interval`; without news only a [`HEARTBEAT`]. No timer runs while
/// there is nothing to send, so an idle daemon is not woken for it.
/// Failed reports lose their records (counted) but never block; the next
/// try waits out `interval`.
pub async fn report_loop(
    config: ControlConfig,
    mut batches: mpsc::Receiver<FlowBatch>,
    interval: Duration,
) {
    let started_at = unix_now();
    let mut aggregator = Aggregator::default();
    let mut channel: Option<Channel> = None;
    let mut have_counters = false;
    let mut last_try: Option<tokio::time::Instant> = None;
    let mut last_delivery: Option<tokio::time::Instant> = None;
    loop {
        let due = report_due(
            have_counters,
            aggregator.has_news(),
            last_try,
            last_delivery,
            interval,
        );
        let wait = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => {
                    aggregator.add(batch, unix_now());
                    have_counters = true;
                }
                None => return,
            },
            () = wait => {
                let report = aggregator.take_report(started_at);
                let records = report.records.len();
                last_try = Some(tokio::time::Instant::now());
                match send(&config, &mut channel, report).await {
                    Ok(()) => {
                        aggregator.delivered();
                        last_delivery = last_try;
                    }
                    Err(e) => {
                        channel = None;
                        aggregator.count_lost(records);
                        tracing::debug!(error = %format!("{e:#}"), records, "flow report failed; its records are lost");
                    }
                }
            }
        }
    }
}

/// When the next report goes: `None` before the first counters; news a
/// whole `interval` after the last try (at once if that is past);
/// otherwise a heartbeat [`HEARTBEAT`] after the last delivery, so the
/// server's report age still tells a live idle daemon from a gone one.
fn report_due(
    have_counters: bool,
    news: bool,
    last_try: Option<tokio::time::Instant>,
    last_delivery: Option<tokio::time::Instant>,
    interval: Duration,
) -> Option<tokio::time::Instant> {
    if !have_counters {
        return None;
    }
    let now = tokio::time::Instant::now();
    let paced = last_try.map_or(now, |at| at + interval);
    if news {
        return Some(paced);
    }
    Some(last_delivery.map_or(paced, |at| (at + HEARTBEAT).max(paced)))
}

async fn send(
    config: &ControlConfig,
    channel: &mut Option<Channel>,
    report: v1::FlowReport,
) -> Result<()> {
    let ready = match channel {
        Some(channel) => channel.clone(),
        None => {
            let fresh = config.channel().await?;
            *channel = Some(fresh.clone());
            fresh
        }
    };
    tokio::time::timeout(
        REPORT_TIMEOUT,
        ControlClient::new(ready).report_flows(report),
    )
    .await??;
    Ok(())
}

/// Counters by name, as the report carries them.
fn named<'a, N: AsRef<str> + 'a>(
    list: impl IntoIterator<Item = &'a (N, u64)>,
) -> Vec<v1::NamedCounter> {
    list.into_iter()
        .map(|(name, value)| v1::NamedCounter {
            name: name.as_ref().to_owned(),
            value: *value,
        })
        .collect()
}

#[cfg(test)]
mod tests;
