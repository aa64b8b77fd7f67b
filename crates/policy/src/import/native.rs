//! The native policy an importer builds, and its rendering as TOML text that
//! [`crate::Policy::parse`] reads back. Rendering is deterministic: the same
//! input gives the same bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ztmesh_filter::Action;

use crate::{Endpoint, PortSpec};

/// A policy under construction, in the order it is written out.
#[derive(Debug, Default)]
pub(crate) struct NativePolicy {
    /// Comment lines at the top of the file (without the `# `).
    pub header: Vec<String>,
    /// Group name -> member users.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Segment name -> selectors.
    pub segments: BTreeMap<String, SegmentSpec>,
    /// Rules in file order.
    pub rules: Vec<RuleSpec>,
    /// Tests in file order.
    pub tests: Vec<TestSpec>,
}

/// One segment's selectors, each list in the order it is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SegmentSpec {
    /// Networks (`cidrs`).
    pub cidrs: Vec<String>,
    /// Tags (`tags`).
    pub tags: Vec<String>,
    /// Groups (`groups`).
    pub groups: Vec<String>,
    /// Users (`users`).
    pub users: Vec<String>,
}

/// One `[[rules]]` entry (always `allow`, the default action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleSpec {
    /// Comment line written above the rule: where it came from.
    pub comment: String,
    /// Unique rule name.
    pub name: String,
    /// Source segments.
    pub from: Vec<String>,
    /// Destination segments.
    pub to: Vec<String>,
    /// Port specs such as `tcp/443` or `icmp`.
    pub ports: Vec<String>,
}

/// One `[[tests]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestSpec {
    /// Where the test came from, e.g. `tests[0].accept[1]`.
    pub origin: String,
    /// Source endpoint.
    pub from: Endpoint,
    /// Destination endpoint.
    pub to: Endpoint,
    /// The flow.
    pub port: PortSpec,
    /// The expected decision.
    pub expect: Action,
}

impl NativePolicy {
    /// The policy as TOML; `with_tests: false` leaves the `[[tests]]` out.
    pub(crate) fn render(&self, with_tests: bool) -> String {
        let mut out = String::new();
        for line in &self.header {
            push_comment(&mut out, line);
        }
        if !self.groups.is_empty() {
            out.push_str("\n[groups]\n");
            for (name, members) in &self.groups {
                let _ = writeln!(out, "{} = {}", key(name), array(members));
            }
        }
        let (inline, tables): (Vec<_>, Vec<_>) = self
            .segments
            .iter()
            .partition(|(_, spec)| spec.selector_count() <= 1);
        if !inline.is_empty() {
            out.push_str("\n[segments]\n");
            for (name, spec) in inline {
                let fields: Vec<String> = spec
                    .fields()
                    .map(|(field, values)| format!("{field} = {}", array(values)))
                    .collect();
                let _ = writeln!(out, "{} = {{ {} }}", key(name), fields.join(", "));
            }
        }
        for (name, spec) in tables {
            let _ = writeln!(out, "\n[segments.{}]", key(name));
            for (field, values) in spec.fields() {
                let _ = writeln!(out, "{field} = {}", array(values));
            }
        }
        for rule in &self.rules {
            out.push('\n');
            push_comment(&mut out, &rule.comment);
            out.push_str("[[rules]]\n");
            let _ = writeln!(out, "name = {}", quote(&rule.name));
            let _ = writeln!(out, "from = {}", array(&rule.from));
            let _ = writeln!(out, "to = {}", array(&rule.to));
            let _ = writeln!(out, "ports = {}", array(&rule.ports));
        }
        if with_tests {
            for test in &self.tests {
                out.push('\n');
                push_comment(&mut out, &format!("from {}", test.origin));
                out.push_str("[[tests]]\n");
                let _ = writeln!(out, "from = {}", quote(&test.from.to_string()));
                let _ = writeln!(out, "to = {}", quote(&test.to.to_string()));
                let _ = writeln!(out, "port = {}", quote(&test.port.to_string()));
                let expect = match test.expect {
                    Action::Allow => "allow",
                    Action::Deny => "deny",
                };
                let _ = writeln!(out, "expect = {}", quote(expect));
            }
        }
        out
    }
}

impl SegmentSpec {
    /// The non-empty selector lists, by field name.
    fn fields(&self) -> impl Iterator<Item = (&'static str, &Vec<String>)> {
        [
            ("cidrs", &self.cidrs),
            ("tags", &self.tags),
            ("groups", &self.groups),
            ("users", &self.users),
        ]
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
    }

    /// How many selector kinds are used.
    fn selector_count(&self) -> usize {
        self.fields().count()
    }
}

/// Appends `# line`, with control characters (which would end the comment
/// or be invalid TOML) replaced by spaces.
fn push_comment(out: &mut String, line: &str) {
    out.push_str("# ");
    out.extend(line.chars().map(|c| if c.is_control() { ' ' } else { c }));
    out.push('\n');
}

/// A key: bare when TOML allows it, quoted otherwise.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { name.to_string() } else { quote(name) }
}

/// `["a", "b"]`.
fn array(values: &[String]) -> String {
    let items: Vec<String> = values.iter().map(|v| quote(v)).collect();
    format!("[{}]", items.join(", "))
}

/// A TOML basic string: quotes, backslashes and control characters escaped.
pub(crate) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
