//! The latest counters each daemon reported (for metrics and `admin
//! flows`), and the per-device report rate limit. In memory, per replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ztmesh_proto::v1;

/// Shortest time between two accepted reports from one device.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(900);

/// A device's last report (without its records) and when it came.
#[derive(Debug, Clone)]
pub struct DeviceTelemetry {
    /// Device name when the report came.
    pub name: String,
    /// Unix seconds.
    pub received_at: i64,
    /// Counters; `records` is empty.
    pub report: v1::FlowReport,
    accepted_at: Instant,
}

/// Shared table of the latest reports.
#[derive(Clone, Default)]
pub struct Telemetry {
    devices: Arc<Mutex<HashMap<String, DeviceTelemetry>>>,
}

impl Telemetry {
    /// Whether a report from `device_id` may be taken at `now`; the caller
    /// refuses it otherwise.
    pub fn admits(&self, device_id: &str, now: Instant) -> bool {
        self.devices.lock().is_ok_and(|devices| {
            devices
                .get(device_id)
                .is_none_or(|last| now.duration_since(last.accepted_at) >= MIN_REPORT_INTERVAL)
        })
    }

    /// Keeps `report`'s counters as the device's latest.
    pub fn record(
        &self,
        device_id: &str,
        name: &str,
        mut report: v1::FlowReport,
        received_at: i64,
        now: Instant,
    ) {
        report.records.clear();
        if let Ok(mut devices) = self.devices.lock() {
            devices.insert(
                device_id.to_owned(),
                DeviceTelemetry {
                    name: name.to_owned(),
                    received_at,
                    report,
                    accepted_at: now,
                },
            );
        }
    }

    /// Forgets a device (revoked or deleted).
    pub fn forget(&self, device_id: &str) {
        if let Ok(mut devices) = self.devices.lock() {
            devices.remove(device_id);
        }
    }

    /// Every device's latest report, by device id.
    pub fn snapshot(&self) -> Vec<(String, DeviceTelemetry)> {
        self.devices
            .lock()
            .map(|devices| {
                let mut list: Vec<_> = devices
                    .iter()
                    .map(|(id, t)| (id.clone(), t.clone()))
                    .collect();
                list.sort_by(|a, b| a.1.name.cmp(&b.1.name));
                list
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_rate_limited_per_device_and_kept_without_records() {
        let telemetry = Telemetry::default();
        let start = Instant::now();
        assert!(telemetry.admits("a", start));
        let report = v1::FlowReport {
            policy_version: 3,
            records: vec![v1::FlowRecord::default()],
            ..Default::default()
        };
        telemetry.record("a", "alpha", report, 100, start);
        assert!(!telemetry.admits("a", start + Duration::from_millis(500)));
        assert!(telemetry.admits("b", start + Duration::from_millis(500)));
        assert!(telemetry.admits("a", start + MIN_REPORT_INTERVAL));
        let snapshot = telemetry.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].1.name, "alpha");
        assert_eq!(snapshot[0].1.report.policy_version, 3);
        assert!(snapshot[0].1.report.records.is_empty());
        telemetry.forget("a");
        assert!(telemetry.snapshot().is_empty());
    }
}
