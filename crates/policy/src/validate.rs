//! From text to [`Policy`]: deserialize, check every name and reference,
//! then run the policy's own tests. The first problem in the text wins.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use toml::Spanned;
use ztmesh_filter::Action;

use crate::endpoint::{invalid_name_reason, is_valid_name};
use crate::error::{PolicyError, Problems};
use crate::eval::{Rule, Segment, action_word};
use crate::model::{PolicyFile, RuleFile, SegmentFile, TestFile, Text};
use crate::ports::{PortSpec, RulePort, group_by_protocol};
use crate::portset::PortSet;
use crate::posture::Requirement;
use crate::{Endpoint, Policy};

mod postures;
mod shadow;
mod time;

/// Parses, validates and tests `text`.
pub(crate) fn parse_policy(text: &str) -> Result<Policy, PolicyError> {
    let file: PolicyFile = toml::from_str(text).map_err(|error| {
        let offset = error.span().map_or(0, |span| span.start);
        PolicyError::at_offset(text, offset, error.message().trim_end())
    })?;
    let mut problems = Problems::new(text);
    let groups = check_groups(&file.groups, &mut problems);
    let postures = postures::check_postures(&file.postures, &mut problems);
    let segments = check_segments(&file.segments, &groups, &postures, &mut problems);
    let rules = check_rules(&file.rules, &segments, &mut problems);
    let tests = check_tests(&file.tests, &groups, &mut problems);
    problems.finish()?;
    let warnings = shadow::unreachable_rules(&rules, text);
    let policy = Policy {
        text: text.to_string(),
        segments,
        postures,
        rules,
        warnings,
    };
    run_tests(&policy, &tests, text)?;
    Ok(policy)
}

/// A parsed `[[tests]]` entry.
struct PolicyTest {
    /// Where the test starts, for a failure.
    offset: usize,
    from: Endpoint,
    to: Endpoint,
    port: PortSpec,
    expect: Action,
    /// Evaluation instant (Unix seconds); `None`: every rule in force.
    at: Option<i64>,
}

/// Runs the tests in order; the first failure rejects the policy.
fn run_tests(policy: &Policy, tests: &[PolicyTest], text: &str) -> Result<(), PolicyError> {
    for (index, test) in tests.iter().enumerate() {
        let decision = match test.at {
            Some(at) => policy.evaluate_at(&test.from, &test.to, &test.port, at),
            None => policy.evaluate(&test.from, &test.to, &test.port),
        };
        if decision.action == test.expect {
            continue;
        }
        let by = match &decision.rule {
            Some(rule) => format!("by rule `{rule}`"),
            None => "by default (no rule matched)".to_string(),
        };
        let when = test
            .at
            .map(|at| format!(" at {}", crate::schedule::format_utc(at)))
            .unwrap_or_default();
        let message = format!(
            "test #{} (from {} to {} on {}{when}) expected {} but got {} {by}",
            index + 1,
            test.from,
            test.to,
            test.port,
            action_word(test.expect),
            action_word(decision.action),
        );
        return Err(PolicyError::at_offset(text, test.offset, message));
    }
    Ok(())
}

/// Checks group names and members; returns group -> users. An empty member
/// list is valid: the group's members come from the user directory.
fn check_groups(
    groups: &BTreeMap<Text, Vec<Text>>,
    problems: &mut Problems<'_>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut checked = BTreeMap::new();
    for (name, members) in groups {
        check_name("group", name, problems);
        for member in members {
            if member.get_ref().is_empty() {
                problems.add(
                    member.span(),
                    format!(
                        "group `{}` has an empty member; list users such as alice@example.com",
                        name.get_ref()
                    ),
                );
            }
        }
        let users = members.iter().map(|m| m.get_ref().clone()).collect();
        checked.insert(name.get_ref().clone(), users);
    }
    checked
}

/// Checks segment names and selectors; resolves groups to their listed
/// users and postures to their requirements.
fn check_segments(
    segments: &BTreeMap<Text, SegmentFile>,
    groups: &BTreeMap<String, BTreeSet<String>>,
    postures: &BTreeMap<String, Requirement>,
    problems: &mut Problems<'_>,
) -> BTreeMap<String, Segment> {
    let mut checked = BTreeMap::new();
    for (name, file) in segments {
        check_name("segment", name, problems);
        let segment_name = name.get_ref();
        for tag in &file.tags {
            check_name("tag", tag, problems);
        }
        let mut segment = Segment {
            postures: postures::segment_postures(&file.posture, postures, problems),
            ..Segment::default()
        };
        for group in &file.groups {
            match groups.get(group.get_ref()) {
                Some(users) => segment.group_users.extend(users.iter().cloned()),
                None => problems.add(
                    group.span(),
                    undefined("group", group.get_ref(), groups.keys()),
                ),
            }
        }
        for (what, values) in [("user", &file.users), ("device", &file.devices)] {
            for value in values.iter().filter(|value| value.get_ref().is_empty()) {
                problems.add(
                    value.span(),
                    format!("segment `{segment_name}` lists an empty {what}; remove it or write a {what} name"),
                );
            }
        }
        segment.tags = strings(&file.tags);
        segment.users = strings(&file.users);
        segment.groups = strings(&file.groups);
        segment.devices = strings(&file.devices);
        segment.monitor = file.monitor.as_ref().is_some_and(|m| *m.get_ref());
        for cidr in &file.cidrs {
            match cidr.get_ref().parse::<IpNet>() {
                Ok(net) => segment.cidrs.push(net.trunc()),
                Err(_) => problems.add(
                    cidr.span(),
                    format!(
                        "segment `{segment_name}`: `{}` is not a network; write a CIDR such as 100.64.1.0/24 or fd7a:115c::/48",
                        cidr.get_ref()
                    ),
                ),
            }
        }
        checked.insert(segment_name.clone(), segment);
    }
    checked
}

/// Checks every rule: unique names, defined segments, port specs, action.
fn check_rules(
    rules: &[RuleFile],
    segments: &BTreeMap<String, Segment>,
    problems: &mut Problems<'_>,
) -> Vec<Rule> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut checked = Vec::with_capacity(rules.len());
    for (index, file) in rules.iter().enumerate() {
        let name = file.name.get_ref();
        check_name("rule", &file.name, problems);
        if let Some(first) = seen.get(name.as_str()) {
            problems.add(
                file.name.span(),
                format!("rule name `{name}` is already used by rule #{first}; give each rule a unique name"),
            );
        } else {
            seen.insert(name, index + 1);
        }
        let from = check_segment_list(name, "from", &file.from, segments, problems);
        let to = check_segment_list(name, "to", &file.to, segments, problems);
        if file.ports.get_ref().is_empty() {
            problems.add(
                file.ports.span(),
                format!("rule `{name}`: `ports` is empty; list at least one port spec such as tcp/443 or any"),
            );
        }
        let mut ports = Vec::new();
        for spec in file.ports.get_ref() {
            match RulePort::parse(spec.get_ref()) {
                Ok(port) => ports.push(port),
                Err(message) => problems.add(spec.span(), message),
            }
        }
        let action = match &file.action {
            None => Action::Allow,
            Some(action) => parse_action(action, "action", problems),
        };
        let monitor = file.monitor.as_ref().is_some_and(|m| *m.get_ref());
        if let Some(flag) = file
            .monitor
            .as_ref()
            .filter(|_| monitor && action == Action::Allow)
        {
            problems.add(
                flag.span(),
                format!("rule `{name}`: `monitor` applies to deny rules (an allow rule already passes its flows); remove it, or put a segment in monitor mode"),
            );
        }
        checked.push(Rule {
            monitor,
            time: time::rule_time(name, file, problems),
            offset: file.name.span().start,
            name: name.clone(),
            from,
            to,
            filter_ports: group_by_protocol(&ports),
            port_set: PortSet::of(&ports),
            ports,
            action,
        });
    }
    checked
}

/// Checks a rule's `from` or `to`: non-empty, every segment defined.
fn check_segment_list(
    rule: &str,
    field: &str,
    list: &Spanned<Vec<Text>>,
    segments: &BTreeMap<String, Segment>,
    problems: &mut Problems<'_>,
) -> Vec<String> {
    if list.get_ref().is_empty() {
        problems.add(
            list.span(),
            format!("rule `{rule}`: `{field}` is empty; list at least one segment"),
        );
    }
    for segment in list.get_ref() {
        if !segments.contains_key(segment.get_ref()) {
            problems.add(
                segment.span(),
                undefined("segment", segment.get_ref(), segments.keys()),
            );
        }
    }
    list.get_ref().iter().map(|s| s.get_ref().clone()).collect()
}

/// Parses every test's endpoints, flow and expectation.
fn check_tests(
    tests: &[Spanned<TestFile>],
    groups: &BTreeMap<String, BTreeSet<String>>,
    problems: &mut Problems<'_>,
) -> Vec<PolicyTest> {
    let mut checked = Vec::with_capacity(tests.len());
    for test in tests {
        let file = test.get_ref();
        let from = check_endpoint(&file.from, groups, problems);
        let to = check_endpoint(&file.to, groups, problems);
        let port = PortSpec::parse(file.port.get_ref())
            .map_err(|message| problems.add(file.port.span(), message))
            .ok();
        let expect = parse_action(&file.expect, "expect", problems);
        let at = file
            .at
            .as_ref()
            .and_then(|at| time::instant(at, "at", problems));
        if let (Some(from), Some(to), Some(port)) = (from, to, port) {
            checked.push(PolicyTest {
                offset: test.span().start,
                from,
                to,
                port,
                expect,
                at,
            });
        }
    }
    checked
}

/// Parses a test endpoint; a `group:` endpoint must name a defined group.
fn check_endpoint(
    text: &Text,
    groups: &BTreeMap<String, BTreeSet<String>>,
    problems: &mut Problems<'_>,
) -> Option<Endpoint> {
    match Endpoint::parse(text.get_ref()) {
        Ok(Endpoint::Group(group)) if !groups.contains_key(&group) => {
            problems.add(text.span(), undefined("group", &group, groups.keys()));
            None
        }
        Ok(endpoint) => Some(endpoint),
        Err(message) => {
            problems.add(text.span(), message);
            None
        }
    }
}

/// Parses `allow` or `deny` for `field`; anything else is a problem (and
/// yields `Deny`, which is never used because the policy is rejected).
fn parse_action(text: &Text, field: &str, problems: &mut Problems<'_>) -> Action {
    match text.get_ref().as_str() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        other => {
            problems.add(
                text.span(),
                format!("`{other}`: unknown {field}; use \"allow\" or \"deny\""),
            );
            Action::Deny
        }
    }
}

/// Records a problem if `name` is not a valid `what` name.
fn check_name(what: &str, name: &Text, problems: &mut Problems<'_>) {
    if !is_valid_name(name.get_ref()) {
        problems.add(name.span(), invalid_name_reason(what, name.get_ref()));
    }
}

/// "`what` `name` is not defined; defined whats: a, b".
fn undefined<'a>(what: &str, name: &str, defined: impl Iterator<Item = &'a String>) -> String {
    let defined: Vec<&str> = defined.map(String::as_str).collect();
    if defined.is_empty() {
        format!("{what} `{name}` is not defined; no {what}s are defined yet")
    } else {
        format!(
            "{what} `{name}` is not defined; defined {what}s: {}",
            defined.join(", ")
        )
    }
}

/// The plain strings of spanned values.
fn strings(values: &[Text]) -> BTreeSet<String> {
    values.iter().map(|v| v.get_ref().clone()).collect()
}

#[cfg(test)]
mod tests;
