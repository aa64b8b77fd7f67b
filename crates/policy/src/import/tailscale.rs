//! Tailscale/headscale policy files (HuJSON) to native policies. The file is
//! read into a JSON tree (duplicate keys rejected), walked section by
//! section with the JSON path of every value at hand for errors, and the
//! result is checked: it must parse, and the file's own tests must pass.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde_json::{Map, Value};
use ztmesh_filter::Action;

use super::native::{NativePolicy, RuleSpec, TestSpec};
use super::{ImportError, Imported};

mod alias;
mod json;

use alias::{Alias, Proto, SegmentTable};
use json::{array, field_path, index_path, invalid, object, string, unsupported};

/// Sections that grant no network access and have nothing to carry over,
/// with why they are left out.
const IGNORED_SECTIONS: [(&str, &str); 8] = [
    ("ssh", "Tailscale SSH rules; ztmesh has no SSH access layer"),
    ("sshTests", "tests of Tailscale SSH rules"),
    (
        "nodeAttrs",
        "node attributes (Tailscale client features, not access rules)",
    ),
    (
        "autoApprovers",
        "route and exit node approval; ztmesh has no advertised routes to approve",
    ),
    ("derpMap", "relay server settings"),
    ("randomizeClientPort", "a client port setting"),
    ("disableIPv4", "an address assignment setting"),
    ("OneCGNATRoute", "a client routing setting"),
];

/// Imports `text`; see [`super::import_tailscale`].
pub(crate) fn import(text: &str) -> Result<Imported, ImportError> {
    let root = json::parse(text)?;
    let root = object(&root, "(top level)")?;
    let mut converter = Converter::default();
    converter.check_sections(root)?;
    if let Some(groups) = root.get("groups") {
        converter.read_groups(groups)?;
    }
    if let Some(hosts) = root.get("hosts") {
        converter.read_hosts(hosts)?;
    }
    if let Some(owners) = root.get("tagOwners") {
        converter.read_tag_owners(owners)?;
    }
    if let Some(acls) = root.get("acls") {
        for (index, entry) in array(acls, "acls")?.iter().enumerate() {
            converter.convert_acl(entry, index)?;
        }
    }
    if let Some(tests) = root.get("tests") {
        for (index, entry) in array(tests, "tests")?.iter().enumerate() {
            converter.convert_test(entry, index)?;
        }
    }
    converter.finish()
}

/// What the walk has collected so far.
#[derive(Default)]
struct Converter {
    /// Declared groups, without the `group:` prefix, with their members.
    groups: BTreeMap<String, Vec<String>>,
    /// Host aliases and their networks.
    hosts: BTreeMap<String, IpNet>,
    /// Segments made for aliases.
    segments: SegmentTable,
    /// Rules in file order.
    rules: Vec<RuleSpec>,
    /// Tests in file order.
    tests: Vec<TestSpec>,
    /// Headscale-style users (`name@`), for a warning.
    bare_users: BTreeSet<String>,
    /// Warnings in the order they arose.
    warnings: Vec<String>,
}

impl Converter {
    /// Rejects unsupported and unknown top-level keys; warns about sections
    /// that are left out.
    fn check_sections(&mut self, root: &Map<String, Value>) -> Result<(), ImportError> {
        for key in root.keys() {
            let path = field_path("", key);
            match key.as_str() {
                "groups" | "hosts" | "acls" | "tests" | "tagOwners" => {}
                "grants" => {
                    return Err(unsupported(
                        path,
                        "grants have no ztmesh equivalent yet (application capabilities and via routes cannot be expressed); rewrite network-only grants as `acls` entries (`ip` ports become `dst` ports) and import again",
                    ));
                }
                "postures" | "defaultSrcPosture" => {
                    return Err(unsupported(
                        path,
                        "Tailscale device posture conditions cannot be converted exactly; remove the section and the `srcPosture` fields, import, then declare the conditions as ztmesh `[postures]` and add them to segments",
                    ));
                }
                "ipsets" => {
                    return Err(unsupported(
                        path,
                        "IP sets (with their add/remove arithmetic) are not converted; replace each `ipset:` reference with hosts or CIDRs and import again",
                    ));
                }
                other => match IGNORED_SECTIONS.iter().find(|(name, _)| *name == other) {
                    Some((name, why)) => self.warnings.push(format!(
                        "section `{name}` is left out: {why}; it grants no network access"
                    )),
                    None => {
                        return Err(invalid(
                            path,
                            format!(
                                "unknown section `{other}`; supported: groups, hosts, tagOwners, acls, tests (and ignored with a warning: ssh, sshTests, nodeAttrs, autoApprovers, derpMap, randomizeClientPort, disableIPv4, OneCGNATRoute)"
                            ),
                        ));
                    }
                },
            }
        }
        Ok(())
    }

    /// Reads `groups`: `"group:NAME": ["user@example.com", …]`.
    fn read_groups(&mut self, groups: &Value) -> Result<(), ImportError> {
        for (key, members) in object(groups, "groups")? {
            let path = field_path("groups", key);
            let Some(name) = key.strip_prefix("group:") else {
                return Err(invalid(
                    path,
                    format!("group names start with `group:`; write \"group:{key}\""),
                ));
            };
            alias::check_name("group", name, &path)?;
            let mut users = Vec::new();
            for (i, member) in array(members, &path)?.iter().enumerate() {
                let member_path = index_path(&path, i);
                let member = string(member, &member_path)?;
                if member.starts_with("group:") || member.starts_with("autogroup:") {
                    return Err(unsupported(
                        member_path,
                        format!(
                            "`{member}`: groups cannot contain groups (Tailscale rejects this too); list the users"
                        ),
                    ));
                }
                if !member.contains('@') {
                    return Err(invalid(
                        member_path,
                        format!(
                            "`{member}` is not a user; write an email such as alice@example.com, or `{member}@` for a headscale user"
                        ),
                    ));
                }
                self.note_user(member);
                users.push(member.to_string());
            }
            self.groups.insert(name.to_string(), users);
        }
        Ok(())
    }

    /// Reads `hosts`: `"NAME": "IP or CIDR"`.
    fn read_hosts(&mut self, hosts: &Value) -> Result<(), ImportError> {
        for (name, address) in object(hosts, "hosts")? {
            let path = field_path("hosts", name);
            alias::check_name("host", name, &path)?;
            let address = string(address, &path)?;
            let net = alias::parse_network(address).ok_or_else(|| {
                invalid(
                    path.clone(),
                    format!("`{address}` is not an IP address or CIDR; write 100.64.0.5, 10.1.0.0/16 or fd7a:115c::/48"),
                )
            })?;
            self.hosts.insert(name.clone(), net);
        }
        Ok(())
    }

    /// `tagOwners` has no ztmesh meaning (join tokens grant tags); its tags
    /// are still identities the `*` segment lists.
    fn read_tag_owners(&mut self, owners: &Value) -> Result<(), ImportError> {
        let mut tags = Vec::new();
        for key in object(owners, "tagOwners")?.keys() {
            let path = field_path("tagOwners", key);
            let Some(tag) = key.strip_prefix("tag:") else {
                return Err(invalid(
                    path,
                    format!("tag names start with `tag:`; write \"tag:{key}\""),
                ));
            };
            alias::check_name("tag", tag, &path)?;
            self.segments.note_tag(tag);
            tags.push(tag.to_string());
        }
        if !tags.is_empty() {
            self.warnings.push(format!(
                "section `tagOwners` is left out: ztmesh grants tags through join tokens; create them with `ztmesh admin join-token create --tag NAME` for tags: {}",
                tags.join(", ")
            ));
        }
        Ok(())
    }

    /// Converts `acls[index]` into one rule per distinct set of ports among
    /// its destinations.
    fn convert_acl(&mut self, entry: &Value, index: usize) -> Result<(), ImportError> {
        let path = index_path("acls", index);
        let entry = object(entry, &path)?;
        for key in entry.keys() {
            match key.as_str() {
                "action" | "src" | "dst" | "proto" | "users" | "ports" => {}
                "srcPosture" => {
                    return Err(unsupported(
                        field_path(&path, key),
                        "device posture conditions cannot be converted exactly; remove `srcPosture`, import, then add ztmesh `posture = [...]` to the source segment",
                    ));
                }
                other => {
                    return Err(invalid(
                        field_path(&path, key),
                        format!(
                            "unknown field `{other}` in an ACL entry; supported: action, src, dst, proto (and the legacy users, ports)"
                        ),
                    ));
                }
            }
        }
        let action_path = field_path(&path, "action");
        match entry.get("action") {
            None => {
                return Err(invalid(
                    action_path,
                    "missing; write \"action\": \"accept\"",
                ));
            }
            Some(action) => {
                let action = string(action, &action_path)?;
                if action != "accept" {
                    return Err(unsupported(
                        action_path,
                        format!(
                            "action `{action}`: Tailscale ACL entries only accept; write \"accept\" (add ztmesh `action = \"deny\"` rules after the import if you need them)"
                        ),
                    ));
                }
            }
        }
        let (src_key, src) = either_field(entry, "src", "users", &path)?;
        let (dst_key, dst) = either_field(entry, "dst", "ports", &path)?;
        let proto = Proto::parse(entry.get("proto"), &field_path(&path, "proto"))?;

        let src_path = field_path(&path, src_key);
        let mut from = Vec::new();
        for (i, source) in array(src, &src_path)?.iter().enumerate() {
            let item_path = index_path(&src_path, i);
            let alias = self.resolve(string(source, &item_path)?, &item_path)?;
            push_unique(&mut from, self.segments.segment_for(&alias));
        }
        if from.is_empty() {
            return Err(invalid(src_path, "no sources; list at least one"));
        }

        let dst_path = field_path(&path, dst_key);
        // Ports -> (destination segments, the dst entries as written).
        let mut groups: Vec<(Vec<String>, Vec<String>, Vec<String>)> = Vec::new();
        for (i, destination) in array(dst, &dst_path)?.iter().enumerate() {
            let item_path = index_path(&dst_path, i);
            let written = string(destination, &item_path)?;
            let (alias_text, ports_text) = alias::split_destination(written, &item_path)?;
            let alias = self.resolve(alias_text, &item_path)?;
            let ports = proto.rule_ports(ports_text, &item_path)?;
            let segment = self.segments.segment_for(&alias);
            match groups.iter_mut().find(|(p, _, _)| *p == ports) {
                Some((_, to, sources)) => {
                    push_unique(to, segment);
                    sources.push(written.to_string());
                }
                None => groups.push((ports, vec![segment], vec![written.to_string()])),
            }
        }
        if groups.is_empty() {
            return Err(invalid(dst_path, "no destinations; list at least one"));
        }
        for (split, (ports, to, written)) in groups.into_iter().enumerate() {
            let written: Vec<String> = written.iter().map(|w| super::native::quote(w)).collect();
            self.rules.push(RuleSpec {
                comment: format!("acls[{index}]: dst {}", written.join(", ")),
                name: format!("acl-{index}{}", split_suffix(split)),
                from: from.clone(),
                to,
                ports,
            });
        }
        Ok(())
    }

    /// Converts `tests[index]`: one native test per `accept` and `deny` entry.
    fn convert_test(&mut self, entry: &Value, index: usize) -> Result<(), ImportError> {
        let path = index_path("tests", index);
        let entry = object(entry, &path)?;
        for key in entry.keys() {
            match key.as_str() {
                "src" | "proto" | "accept" | "deny" => {}
                "srcPostureAttrs" => {
                    return Err(unsupported(
                        field_path(&path, key),
                        "posture attributes in tests cannot be converted; remove `srcPostureAttrs` and import again",
                    ));
                }
                other => {
                    return Err(invalid(
                        field_path(&path, key),
                        format!(
                            "unknown field `{other}` in a test; supported: src, proto, accept, deny"
                        ),
                    ));
                }
            }
        }
        let src_path = field_path(&path, "src");
        let src = entry.get("src").ok_or_else(|| {
            invalid(
                src_path.clone(),
                "missing; write the user, tag or host the test runs as",
            )
        })?;
        let src_alias = self.resolve(string(src, &src_path)?, &src_path)?;
        let from = alias::endpoint(&src_alias, &src_path)?;
        let proto = Proto::parse(entry.get("proto"), &field_path(&path, "proto"))?;
        for (key, expect) in [("accept", Action::Allow), ("deny", Action::Deny)] {
            let Some(list) = entry.get(key) else { continue };
            let list_path = field_path(&path, key);
            for (i, destination) in array(list, &list_path)?.iter().enumerate() {
                let item_path = index_path(&list_path, i);
                let written = string(destination, &item_path)?;
                let (alias_text, port_text) = alias::split_destination(written, &item_path)?;
                let alias = self.resolve(alias_text, &item_path)?;
                self.tests.push(TestSpec {
                    from: from.clone(),
                    to: alias::endpoint(&alias, &item_path)?,
                    port: proto.test_flow(port_text, &item_path)?,
                    expect,
                    origin: item_path,
                });
            }
        }
        Ok(())
    }

    /// Resolves a source or destination alias, checking references.
    fn resolve(&mut self, text: &str, path: &str) -> Result<Alias, ImportError> {
        let alias = alias::resolve(text, &self.groups, &self.hosts, path)?;
        match &alias {
            Alias::User(user) => self.note_user(user),
            Alias::Tag(tag) => self.segments.note_tag(tag),
            _ => {}
        }
        Ok(alias)
    }

    /// Remembers a user for the `*` segment and the headscale warning.
    fn note_user(&mut self, user: &str) {
        if user.ends_with('@') {
            self.bare_users.insert(user.to_string());
        }
        self.segments.note_user(user);
    }

    /// Builds the policy, checks it parses and that the file's tests pass.
    fn finish(mut self) -> Result<Imported, ImportError> {
        if !self.bare_users.is_empty() {
            let users: Vec<&str> = self.bare_users.iter().map(String::as_str).collect();
            self.warnings.push(format!(
                "headscale users are kept as written ({}); ztmesh matches user names exactly, so create the ztmesh users with these names or edit the policy",
                users.join(", ")
            ));
        }
        if !self.groups.is_empty() {
            let groups: Vec<&str> = self.groups.keys().map(String::as_str).collect();
            self.warnings.push(format!(
                "groups also take members from the ztmesh user directory: check that directory groups named {} (`ztmesh admin groups`) hold only the intended users",
                groups.join(", ")
            ));
        }
        let mut header = vec![
            "Imported from a Tailscale/headscale policy file by `ztmesh admin policy import tailscale`.".to_string(),
            "Review it, then check it with `ztmesh admin policy validate` and apply it with `ztmesh admin policy set`.".to_string(),
            "Rule acl-N comes from acls[N] of the file (acl-N-b, acl-N-c, ...: the same entry, other ports).".to_string(),
            "Tailscale rules only allow, so their order does not matter; ztmesh denies what no rule allows.".to_string(),
        ];
        if !self.groups.is_empty() {
            header.push(
                "Groups also take members from the ztmesh user directory (`ztmesh admin groups`)."
                    .to_string(),
            );
        }
        if self.segments.uses_all() {
            header.push("Segment `all` is Tailscale's `*`: every device, by address; it also lists the file's tags, users and groups so that tests match.".to_string());
        }
        let native = NativePolicy {
            header,
            segments: self.segments.finish(self.groups.keys()),
            groups: self.groups,
            rules: self.rules,
            tests: self.tests,
        };
        let text = super::checked_text(&native)?;
        Ok(Imported {
            policy: text,
            warnings: self.warnings,
        })
    }
}

/// The value of `key`, or of its legacy name; exactly one must be present.
fn either_field<'a>(
    entry: &'a Map<String, Value>,
    key: &'static str,
    legacy: &'static str,
    path: &str,
) -> Result<(&'static str, &'a Value), ImportError> {
    match (entry.get(key), entry.get(legacy)) {
        (Some(value), None) => Ok((key, value)),
        (None, Some(value)) => Ok((legacy, value)),
        (Some(_), Some(_)) => Err(invalid(
            field_path(path, legacy),
            format!("`{legacy}` is the legacy name of `{key}`; keep only `{key}`"),
        )),
        (None, None) => Err(invalid(
            field_path(path, key),
            format!("missing; every ACL entry needs `{key}`"),
        )),
    }
}

/// Appends `value` unless already present.
fn push_unique(list: &mut Vec<String>, value: String) {
    if !list.contains(&value) {
        list.push(value);
    }
}

/// `""` for the first rule of an entry, then `-b`, `-c`, …, `-z`, `-ba`, ….
fn split_suffix(split: usize) -> String {
    if split == 0 {
        return String::new();
    }
    let mut letters = Vec::new();
    let mut n = split;
    while n > 0 {
        letters.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
    letters.reverse();
    format!("-{}", letters.into_iter().collect::<String>())
}

#[cfg(test)]
mod tests;
