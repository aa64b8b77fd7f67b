//! ztmesh policy engine: parse and validate a segment policy (TOML), run its
//! own tests, decide hypothetical flows, and compile each device's inbound
//! filter and peer list.
//!
//! Pure: no I/O, no clocks. The server feeds it the policy text and the
//! devices it knows; everything else is a return value.
//!
//! Semantics: rules are evaluated in file order, the first rule whose `from`
//! segments contain the source, whose `to` segments contain the destination
//! and whose ports match the flow decides; when none matches the flow is
//! denied.
//!
//! Segments select devices by `tags`, `users` (owners), `devices` (names) and
//! `groups`. A group matches a device whose owner is listed under the group
//! in `[groups]`, or whose [`Device::groups`] (the owner's groups in the
//! server's user directory) contain it. Every group a segment names must be
//! declared in `[groups]`, which catches typos; an empty member list
//! (`eng = []`) declares a group whose members come only from the directory.
//!
//! A segment may also require postures: `posture = ["hardened", "firewall"]`
//! keeps a device out of the segment unless it passes every one. Postures are
//! declared in `[postures]` (`[postures.hardened]` with any of
//! `min_daemon_version = "0.1.0"`, `os = ["linux", "macos"]`,
//! `disk_encrypted = true`, `firewall = true`,
//! `locations = ["203.0.113.0/24"]`); `disk-encrypted` and `firewall` are
//! built in. A device that never reported its [`Posture`], or whose report
//! leaves a required value unknown, fails (fail closed). Hypothetical
//! endpoints ([`Policy::evaluate`], the policy's `[[tests]]`) are assumed to
//! pass every posture.
//!
//! ```
//! use ztmesh_policy::{Endpoint, Policy, PortSpec};
//!
//! let policy = Policy::parse(r#"
//! [segments]
//! laptops = { users = ["alice@example.com"] }
//! web = { tags = ["web"] }
//!
//! [[rules]]
//! name = "laptops-to-web"
//! from = ["laptops"]
//! to = ["web"]
//! ports = ["tcp/443"]
//! "#).unwrap();
//! let decision = policy.evaluate(
//!     &Endpoint::parse("alice@example.com").unwrap(),
//!     &Endpoint::parse("tag:web").unwrap(),
//!     &PortSpec::parse("tcp/443").unwrap(),
//! );
//! assert_eq!(decision.rule.as_deref(), Some("laptops-to-web"));
//! ```

#![warn(missing_docs)]

mod compile;
mod endpoint;
mod error;
mod eval;
/// Import of Tailscale/headscale ACL files into the native policy format.
pub mod import;
mod model;
mod ports;
mod portset;
mod posture;
mod schedule;
mod validate;
mod version;

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use endpoint::Endpoint;
pub use error::{PolicyError, PolicyWarning};
pub use eval::{Decision, Party};
pub use ports::PortSpec;
pub use posture::PostureCheck;
pub use schedule::format_utc;

use eval::{Rule, Segment};
use posture::Requirement;

/// A device as the policy sees it (the server builds these from its database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Stable device id; what [`Policy::compile`] and [`Policy::peers_of`] take
    /// and return.
    pub id: String,
    /// Device name, matched by a segment's `devices` selector.
    pub name: String,
    /// Owner, matched by a segment's `users` and `groups` selectors; `None`
    /// for tagged devices such as servers.
    pub user: Option<String>,
    /// Tags, matched by a segment's `tags` selector.
    pub tags: Vec<String>,
    /// The device's overlay addresses, e.g. `100.64.0.5/32`.
    pub addresses: Vec<ipnet::IpNet>,
    /// Groups of the owner in the server's user directory, matched by a
    /// segment's `groups` selector; empty for tagged devices.
    pub groups: Vec<String>,
    /// The device's last posture report; `None` if it never reported, which
    /// fails every posture requirement.
    pub posture: Option<Posture>,
}

/// What a device reports about itself, checked against a segment's postures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Posture {
    /// Operating system, lowercase: `linux`, `macos`, `windows`, ...
    pub os: String,
    /// OS version, e.g. `12` or `24.04`.
    pub os_version: String,
    /// Kernel release, e.g. `6.1.0-18-amd64`.
    pub kernel: String,
    /// Version of the ztmesh daemon, e.g. `0.1.0`.
    pub daemon_version: String,
    /// Host name as the device sees it.
    pub hostname: String,
    /// Whether the system disk is encrypted; `None`: could not be determined.
    pub disk_encrypted: Option<bool>,
    /// Whether a host firewall is on; `None`: could not be determined.
    pub firewall: Option<bool>,
    /// The address the server observed the device connecting from.
    pub public_ip: Option<IpAddr>,
}

/// A validated policy whose own tests pass: segments and rules, ready to
/// evaluate flows and compile filters.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The source text as given.
    pub(crate) text: String,
    /// Segment name -> resolved selectors.
    pub(crate) segments: BTreeMap<String, Segment>,
    /// Posture name -> requirement, built-ins included.
    pub(crate) postures: BTreeMap<String, Requirement>,
    /// Rules in evaluation order.
    pub(crate) rules: Vec<Rule>,
    /// Warnings found when the policy was accepted.
    pub(crate) warnings: Vec<PolicyWarning>,
}

impl Policy {
    /// Parses, validates and runs the policy's own tests. Any failure rejects
    /// the whole policy; the error names the line and column at fault.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        validate::parse_policy(text)
    }

    /// The policy in force before any policy is set: no segments, no rules
    /// (nothing is allowed).
    pub fn empty() -> Policy {
        Policy {
            text: String::new(),
            segments: BTreeMap::new(),
            postures: posture::builtin_postures(),
            rules: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Warnings about the accepted policy (rules that can never match), in
    /// text order.
    pub fn warnings(&self) -> &[PolicyWarning] {
        &self.warnings
    }

    /// The source text as given to [`Policy::parse`] (empty for [`Policy::empty`]).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Names of the defined segments, sorted.
    pub fn segment_names(&self) -> impl Iterator<Item = &str> {
        self.segments.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_policy_allows_nothing() {
        let policy = Policy::empty();
        assert_eq!(policy.text(), "");
        assert_eq!(policy.rule_count(), 0);
        assert_eq!(policy.segment_names().count(), 0);
        let decision = policy.evaluate(
            &Endpoint::Tag("web".into()),
            &Endpoint::Tag("db".into()),
            &PortSpec::parse("tcp/443").unwrap(),
        );
        assert_eq!(decision.action, ztmesh_filter::Action::Deny);
        assert_eq!(decision.rule, None);
    }

    #[test]
    fn empty_text_parses_to_the_empty_policy() {
        let policy = Policy::parse("").unwrap();
        assert_eq!(policy.rule_count(), 0);
        assert_eq!(policy.segment_names().count(), 0);
    }

    #[test]
    fn accessors_report_the_policy() {
        let text = "[segments]\nweb = { tags = [\"web\"] }\ndb = { tags = [\"db\"] }\n\n[[rules]]\nname = \"r\"\nfrom = [\"web\"]\nto = [\"db\"]\nports = [\"any\"]\n";
        let policy = Policy::parse(text).unwrap();
        assert_eq!(policy.text(), text);
        assert_eq!(policy.rule_count(), 1);
        assert_eq!(policy.segment_names().collect::<Vec<_>>(), ["db", "web"]);
    }
}
