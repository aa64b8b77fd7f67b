//! Warnings for rules that can never match because earlier rules already
//! decide every flow they cover (for instance an allow hidden behind a
//! broader deny). Segments are compared by name: two differently named
//! segments are assumed to hold different devices, so this finds rules that
//! are unreachable whatever the devices are.

use std::collections::BTreeSet;

use crate::error::PolicyWarning;
use crate::eval::{Rule, action_word};
use crate::portset::PortSet;

/// One warning per unreachable rule, in rule order.
pub(super) fn unreachable_rules(rules: &[Rule], text: &str) -> Vec<PolicyWarning> {
    let mut warnings = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        let earlier = &rules[..index];
        let Some(shadowing) = shadowed_by(rule, earlier) else {
            continue;
        };
        let names: Vec<String> = shadowing
            .iter()
            .map(|&i| format!("`{}` ({})", rules[i].name, action_word(rules[i].action)))
            .collect();
        let overlap = if shadowing.iter().any(|&i| rules[i].action != rule.action) {
            format!(
                "; this {} rule overlaps rules with the opposite action",
                action_word(rule.action)
            )
        } else {
            String::new()
        };
        warnings.push(PolicyWarning::at_offset(
            text,
            rule.offset,
            format!(
                "rule `{}` can never match: earlier rule{} {} already decide{} every flow it covers{overlap}; move it above them or remove it",
                rule.name,
                if names.len() == 1 { "" } else { "s" },
                names.join(", "),
                if names.len() == 1 { "s" } else { "" },
            ),
        ));
    }
    warnings
}

/// Indexes of the earlier rules that together cover every (from, to, port)
/// of `rule`, or `None` if some flow of `rule` reaches it. Rules with time
/// conditions do not always apply, so they shadow nothing, and a rule with
/// time conditions is never reported.
fn shadowed_by(rule: &Rule, earlier: &[Rule]) -> Option<BTreeSet<usize>> {
    if rule.time.is_limited() {
        return None;
    }
    let mut shadowing = BTreeSet::new();
    for from in &rule.from {
        for to in &rule.to {
            let mut covered = PortSet::default();
            for (i, other) in earlier.iter().enumerate() {
                if !other.time.is_limited() && other.from.contains(from) && other.to.contains(to) {
                    covered.add(&other.port_set);
                    shadowing.insert(i);
                    if covered.covers(&rule.port_set) {
                        break;
                    }
                }
            }
            if !covered.covers(&rule.port_set) {
                return None;
            }
        }
    }
    Some(shadowing)
}
