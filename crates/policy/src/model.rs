//! The policy file as written: serde structs mirroring the TOML, with spans
//! kept on every value an error may point at. Nothing here is checked beyond
//! TOML types and unknown keys; `validate` turns this into a [`crate::Policy`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;
use toml::value::Datetime;

/// A spanned string, the unit of almost every policy value.
pub(crate) type Text = Spanned<String>;

/// The whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    /// Group name -> member users (may be empty: members come from the
    /// server's user directory).
    #[serde(default)]
    pub groups: BTreeMap<Text, Vec<Text>>,
    /// Posture name -> requirements.
    #[serde(default)]
    pub postures: BTreeMap<Text, PostureFile>,
    /// Segment name -> selectors.
    #[serde(default)]
    pub segments: BTreeMap<Text, SegmentFile>,
    /// Rules in evaluation order.
    #[serde(default)]
    pub rules: Vec<RuleFile>,
    /// The policy's own tests, run on every parse.
    #[serde(default)]
    pub tests: Vec<Spanned<TestFile>>,
}

/// One `[segments]` entry: a device is in the segment if any selector matches.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SegmentFile {
    /// Device tags.
    #[serde(default)]
    pub tags: Vec<Text>,
    /// Device owners.
    #[serde(default)]
    pub users: Vec<Text>,
    /// Groups of device owners.
    #[serde(default)]
    pub groups: Vec<Text>,
    /// Device names.
    #[serde(default)]
    pub devices: Vec<Text>,
    /// Networks: a device is selected if one of its overlay addresses is
    /// inside one of them.
    #[serde(default)]
    pub cidrs: Vec<Text>,
    /// Postures a selected device must pass to be in the segment.
    #[serde(default)]
    pub posture: Vec<Text>,
    /// `true`: devices in the segment log and count what their rules would
    /// drop but drop nothing.
    #[serde(default)]
    pub monitor: Option<Spanned<bool>>,
}

/// One `[postures]` entry: every field is optional, at least one is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostureFile {
    /// Lowest daemon version, dotted numbers such as `0.1.0`.
    #[serde(default)]
    pub min_daemon_version: Option<Text>,
    /// Operating systems allowed (case-insensitive).
    #[serde(default)]
    pub os: Option<Spanned<Vec<Text>>>,
    /// `true`: the disk must be reported encrypted.
    #[serde(default)]
    pub disk_encrypted: Option<Spanned<bool>>,
    /// `true`: the firewall must be reported on.
    #[serde(default)]
    pub firewall: Option<Spanned<bool>>,
    /// Networks the device's public address must be in.
    #[serde(default)]
    pub locations: Option<Spanned<Vec<Text>>>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleFile {
    /// Unique rule name.
    pub name: Text,
    /// Source segments.
    pub from: Spanned<Vec<Text>>,
    /// Destination segments.
    pub to: Spanned<Vec<Text>>,
    /// Port specs such as `tcp/443`, `udp`, `icmp` or `any`.
    pub ports: Spanned<Vec<Text>>,
    /// `allow` (the default) or `deny`.
    #[serde(default)]
    pub action: Option<Text>,
    /// `true` on a deny rule: count and log what it would drop, drop nothing.
    #[serde(default)]
    pub monitor: Option<Spanned<bool>>,
    /// Weekly window in which the rule applies (UTC).
    #[serde(default)]
    pub schedule: Option<Spanned<ScheduleFile>>,
    /// Instant from which the rule no longer applies.
    #[serde(default)]
    pub until: Option<Spanned<Datetime>>,
}

/// A rule's `schedule = { days = ["mon-fri"], hours = "08:00-18:00" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleFile {
    /// Day names or ranges.
    pub days: Vec<Text>,
    /// `HH:MM-HH:MM`, UTC.
    pub hours: Text,
}

/// One `[[tests]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TestFile {
    /// Source endpoint, e.g. `user:alice@example.com`.
    pub from: Text,
    /// Destination endpoint, e.g. `tag:db`.
    pub to: Text,
    /// Flow, e.g. `tcp/5432`.
    pub port: Text,
    /// `allow` or `deny`.
    pub expect: Text,
    /// The instant the test is evaluated at; without it, rules with time
    /// conditions are treated as in force.
    #[serde(default)]
    pub at: Option<Spanned<Datetime>>,
}
