//! The policy file as written: serde structs mirroring the TOML, with spans
//! kept on every value an error may point at. Nothing here is checked beyond
//! TOML types and unknown keys; `validate` turns this into a [`crate::Policy`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A spanned string, the unit of almost every policy value.
pub(crate) type Text = Spanned<String>;

/// The whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    /// Group name -> member users.
    #[serde(default)]
    pub groups: BTreeMap<Text, Vec<Text>>,
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
    /// Posture conditions: parsed only to reject them with a clear message.
    #[serde(default)]
    pub posture: Option<Spanned<toml::Value>>,
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
}
