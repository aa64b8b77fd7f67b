//! Posture requirements: what a device must report to stay in a segment,
//! and the per-check report admins read to see why a device is out.
//!
//! Checks fail closed: a device that never reported, or reported "could not
//! determine", fails every check that needs the missing value.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::eval::Subject;
use crate::version::Version;
use crate::{Device, Policy, Posture};

/// Name of the built-in posture requiring `disk_encrypted = true`.
pub(crate) const DISK_ENCRYPTED: &str = "disk-encrypted";
/// Name of the built-in posture requiring `firewall = true`.
pub(crate) const FIREWALL: &str = "firewall";

/// One check of one posture of one segment, as applied to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostureCheck {
    /// The segment whose selectors match the device.
    pub segment: String,
    /// The posture the segment requires.
    pub posture: String,
    /// The check: `disk_encrypted`, `firewall`, `location`,
    /// `min_daemon_version` or `os`.
    pub check: String,
    /// Whether the device passes it.
    pub passed: bool,
    /// What the device reported against what is required, e.g.
    /// `daemon 0.0.9 < required 0.1.0` or `not reported`.
    pub detail: String,
}

impl Policy {
    /// Every posture check that decides whether `device` is in the segments
    /// its selectors match, sorted by segment, posture and check. Segments
    /// whose selectors do not match the device, and segments without
    /// postures, contribute nothing.
    pub fn posture_checks(&self, device: &Device) -> Vec<PostureCheck> {
        let subject = Subject::of_device(device);
        let posture = device.posture.as_ref();
        let mut report = Vec::new();
        for (segment_name, segment) in &self.segments {
            if !segment.selects(&subject) {
                continue;
            }
            for (posture_name, requirement) in &segment.postures {
                for check in &requirement.checks {
                    report.push(PostureCheck {
                        segment: segment_name.clone(),
                        posture: posture_name.clone(),
                        check: check.name().to_string(),
                        passed: posture.is_some_and(|p| check.passes(p)),
                        detail: posture
                            .map_or_else(|| "not reported".to_string(), |p| check.detail(p)),
                    });
                }
            }
        }
        report.sort_by(|a, b| {
            (&a.segment, &a.posture, &a.check).cmp(&(&b.segment, &b.posture, &b.check))
        });
        report
    }

    /// Names a segment's `posture` may list, sorted: the policy's
    /// `[postures]` and the built-ins `disk-encrypted` and `firewall`.
    pub fn posture_names(&self) -> impl Iterator<Item = &str> {
        self.postures.keys().map(String::as_str)
    }
}

/// The built-in postures, which every policy has without declaring them.
pub(crate) fn builtin_postures() -> BTreeMap<String, Requirement> {
    BTreeMap::from([
        (
            DISK_ENCRYPTED.to_string(),
            Requirement::new(vec![Check::DiskEncrypted]),
        ),
        (
            FIREWALL.to_string(),
            Requirement::new(vec![Check::Firewall]),
        ),
    ])
}

/// A named posture: every check must pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requirement {
    /// At least one check, sorted by name.
    checks: Vec<Check>,
}

impl Requirement {
    /// A requirement of `checks` (validation ensures there is at least one).
    pub(crate) fn new(mut checks: Vec<Check>) -> Requirement {
        checks.sort_by_key(Check::name);
        Requirement { checks }
    }

    /// Whether `posture` passes every check; a device that never reported
    /// passes nothing.
    pub(crate) fn passes(&self, posture: Option<&Posture>) -> bool {
        posture.is_some_and(|posture| self.checks.iter().all(|check| check.passes(posture)))
    }
}

/// One condition on a device's posture report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// The daemon is at least this version.
    MinDaemonVersion(Version),
    /// The OS is one of these (lowercase).
    Os(Vec<String>),
    /// The disk is reported encrypted.
    DiskEncrypted,
    /// The firewall is reported on.
    Firewall,
    /// The observed public address is in one of these networks.
    Locations(Vec<IpNet>),
}

impl Check {
    /// The check's name in reports.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Check::MinDaemonVersion(_) => "min_daemon_version",
            Check::Os(_) => "os",
            Check::DiskEncrypted => "disk_encrypted",
            Check::Firewall => "firewall",
            Check::Locations(_) => "location",
        }
    }

    /// Whether `posture` passes; unknown values fail.
    fn passes(&self, posture: &Posture) -> bool {
        match self {
            Check::MinDaemonVersion(required) => {
                Version::parse(&posture.daemon_version).is_ok_and(|version| version >= *required)
            }
            Check::Os(allowed) => allowed
                .iter()
                .any(|os| os.eq_ignore_ascii_case(&posture.os)),
            Check::DiskEncrypted => posture.disk_encrypted == Some(true),
            Check::Firewall => posture.firewall == Some(true),
            Check::Locations(networks) => posture
                .public_ip
                .is_some_and(|ip| networks.iter().any(|net| net.contains(&ip.to_canonical()))),
        }
    }

    /// What `posture` reported against what is required.
    fn detail(&self, posture: &Posture) -> String {
        match self {
            Check::MinDaemonVersion(required) => {
                let reported = &posture.daemon_version;
                match Version::parse(reported) {
                    _ if reported.is_empty() => "no daemon version reported".to_string(),
                    Err(_) => format!("daemon version `{reported}` is not a version"),
                    Ok(version) if version >= *required => {
                        format!("daemon {version} >= {required}")
                    }
                    Ok(version) => format!("daemon {version} < required {required}"),
                }
            }
            Check::Os(allowed) => {
                let allowed = allowed.join(", ");
                if posture.os.is_empty() {
                    "no os reported".to_string()
                } else if self.passes(posture) {
                    format!("{} in {allowed}", posture.os)
                } else {
                    format!("{} not in {allowed}", posture.os)
                }
            }
            Check::DiskEncrypted => flag_detail(posture.disk_encrypted),
            Check::Firewall => flag_detail(posture.firewall),
            Check::Locations(networks) => {
                let Some(ip) = posture.public_ip.map(|ip| ip.to_canonical()) else {
                    return "no public address observed".to_string();
                };
                match networks.iter().find(|net| net.contains(&ip)) {
                    Some(net) => format!("{ip} in {net}"),
                    None => {
                        let networks: Vec<String> =
                            networks.iter().map(ToString::to_string).collect();
                        format!("{ip} not in {}", networks.join(", "))
                    }
                }
            }
        }
    }
}

/// `true`, `false` or `unknown`.
fn flag_detail(flag: Option<bool>) -> String {
    match flag {
        Some(true) => "true",
        Some(false) => "false",
        None => "unknown",
    }
    .to_string()
}

#[cfg(test)]
mod tests;
