//! `ReportFlows`: a daemon's filter counters and sampled flow records.
//! Bounded: one report per device about every second, at most 500 records,
//! every field checked before anything is stored.

use std::net::IpAddr;
use std::time::Instant;

use tonic::{Request, Status};
use ztmesh_proto::v1;

use super::ControlService;
use crate::error::internal;
use crate::store::{FlowRow, unix_now};

/// Most records in one report (the daemon sends at most this many).
const MAX_RECORDS: usize = 500;
/// Most named counters in one report, and their longest name.
const MAX_COUNTERS: usize = 10_000;
const MAX_NAME: usize = 256;
/// Verdicts a record may carry.
const VERDICTS: [&str; 7] = [
    "allowed",
    "monitored",
    "no_rule",
    "denied",
    "no_policy",
    "conntrack_full",
    "malformed",
];

impl ControlService {
    pub(super) async fn report_flows_impl(
        &self,
        request: Request<v1::FlowReport>,
    ) -> Result<v1::FlowReportResponse, Status> {
        let device = self.authenticate(&request).await?;
        let now = Instant::now();
        let telemetry = self.hub.telemetry();
        if !telemetry.admits(&device.id, now) {
            return Err(Status::resource_exhausted(
                "flow reports come at most once a second per device; send the next one later",
            ));
        }
        let report = request.into_inner();
        check_report(&report)?;
        let at = unix_now();
        let rows: Vec<FlowRow> = report
            .records
            .iter()
            .map(|r| FlowRow {
                device_id: device.id.clone(),
                at,
                first_seen: r.first_seen,
                last_seen: r.last_seen,
                src: r.src.clone(),
                dst: r.dst.clone(),
                proto: r.proto,
                src_port: r.src_port,
                dst_port: r.dst_port,
                rule: r.rule.clone(),
                verdict: r.verdict.clone(),
                packets: r.packets,
                bytes: r.bytes,
            })
            .collect();
        let stored = if rows.is_empty() {
            0
        } else {
            self.store
                .insert_flow_records(&rows)
                .await
                .map_err(internal)?
        };
        telemetry.record(&device.id, &device.name, report, at, now);
        Ok(v1::FlowReportResponse {
            stored: u32::try_from(stored).unwrap_or(u32::MAX),
        })
    }
}

/// Refuses a report with any field out of range, naming it.
fn check_report(report: &v1::FlowReport) -> Result<(), Status> {
    let bad = |what: String| Err(Status::invalid_argument(what));
    if report.records.len() > MAX_RECORDS {
        return bad(format!(
            "{} flow records in one report; send at most {MAX_RECORDS}",
            report.records.len()
        ));
    }
    for (i, r) in report.records.iter().enumerate() {
        if r.src.parse::<IpAddr>().is_err() || r.dst.parse::<IpAddr>().is_err() {
            return bad(format!("records[{i}]: src and dst must be IP addresses"));
        }
        if r.proto > 255 || r.src_port > 65535 || r.dst_port > 65535 {
            return bad(format!("records[{i}]: protocol or port out of range"));
        }
        if r.rule.len() > MAX_NAME {
            return bad(format!(
                "records[{i}]: the rule name is longer than {MAX_NAME} bytes"
            ));
        }
        if !VERDICTS.contains(&r.verdict.as_str()) {
            return bad(format!(
                "records[{i}]: unknown verdict `{}`; expected one of {}",
                r.verdict.escape_debug(),
                VERDICTS.join(", ")
            ));
        }
    }
    for (field, list) in [("rule_hits", &report.rule_hits), ("drops", &report.drops)] {
        if list.len() > MAX_COUNTERS || list.iter().any(|c| c.name.len() > MAX_NAME) {
            return bad(format!(
                "{field}: at most {MAX_COUNTERS} counters with names up to {MAX_NAME} bytes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> v1::FlowRecord {
        v1::FlowRecord {
            src: "100.64.0.1".into(),
            dst: "100.64.0.2".into(),
            proto: 6,
            src_port: 1000,
            dst_port: 22,
            rule: "no-ssh".into(),
            verdict: "denied".into(),
            packets: 1,
            bytes: 60,
            first_seen: 1,
            last_seen: 1,
        }
    }

    #[test]
    fn bad_reports_are_refused_with_the_field_named() {
        let ok = v1::FlowReport {
            records: vec![record()],
            ..Default::default()
        };
        assert!(check_report(&ok).is_ok());
        type Change = fn(&mut v1::FlowRecord);
        let cases: [(Change, &str); 4] = [
            (|r| r.src = "nope".into(), "must be IP addresses"),
            (|r| r.dst_port = 70000, "out of range"),
            (|r| r.verdict = "maybe".into(), "unknown verdict `maybe`"),
            (|r| r.rule = "x".repeat(300), "longer than"),
        ];
        for (change, needle) in cases {
            let mut r = record();
            change(&mut r);
            let report = v1::FlowReport {
                records: vec![record(), r],
                ..Default::default()
            };
            let error = check_report(&report).unwrap_err();
            assert!(error.message().starts_with("records[1]"), "{error:?}");
            assert!(error.message().contains(needle), "{error:?}");
        }
        let many = v1::FlowReport {
            records: vec![record(); MAX_RECORDS + 1],
            ..Default::default()
        };
        assert!(
            check_report(&many)
                .unwrap_err()
                .message()
                .contains("at most 500")
        );
    }
}
