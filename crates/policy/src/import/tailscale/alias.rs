//! Tailscale aliases (`*`, users, `group:`, `tag:`, hosts, IPs and CIDRs),
//! destination ports and protocols, and the segments and test endpoints they
//! become.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;
use ztmesh_filter::Protocol;

use super::super::ImportError;
use super::super::native::SegmentSpec;
use super::json::{invalid, unsupported};
use crate::endpoint::{invalid_name_reason, is_valid_name};
use crate::{Endpoint, PortSpec};

/// Name of the segment standing for Tailscale's `*`.
const ALL: &str = "all";

/// A resolved source or destination alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Alias {
    /// `*`: every device.
    All,
    /// `group:NAME` (declared).
    Group(String),
    /// `tag:NAME`.
    Tag(String),
    /// A user: `alice@example.com`, or headscale's `alice@`.
    User(String),
    /// A host alias and its network.
    Host(String, IpNet),
    /// An IP address (a /32 or /128) or CIDR written inline.
    Net(IpNet),
}

/// Resolves `text`, checking that groups and hosts are defined.
pub(super) fn resolve(
    text: &str,
    groups: &BTreeMap<String, Vec<String>>,
    hosts: &BTreeMap<String, IpNet>,
    path: &str,
) -> Result<Alias, ImportError> {
    if text == "*" {
        return Ok(Alias::All);
    }
    if text.starts_with("autogroup:") {
        return Err(unsupported(
            path,
            format!(
                "`{text}`: autogroups have no exact ztmesh equivalent (segments select by tag, user, group, device name or address); list the users, groups or tags it stands for and import again"
            ),
        ));
    }
    if text.starts_with("ipset:") {
        return Err(unsupported(
            path,
            format!(
                "`{text}`: IP sets are not converted; use hosts or CIDRs instead and import again"
            ),
        ));
    }
    if let Some(group) = text.strip_prefix("group:") {
        if !groups.contains_key(group) {
            let defined: Vec<String> = groups.keys().map(|g| format!("group:{g}")).collect();
            return Err(invalid(path, undefined("group", text, &defined)));
        }
        return Ok(Alias::Group(group.to_string()));
    }
    if let Some(tag) = text.strip_prefix("tag:") {
        check_name("tag", tag, path)?;
        return Ok(Alias::Tag(tag.to_string()));
    }
    if text.contains('@') {
        if text.contains(':') {
            return Err(invalid(
                path,
                format!("`{text}`: a user name cannot contain `:`"),
            ));
        }
        return Ok(Alias::User(text.to_string()));
    }
    if let Some(net) = hosts.get(text) {
        return Ok(Alias::Host(text.to_string(), *net));
    }
    if let Some(net) = parse_network(text) {
        return Ok(Alias::Net(net));
    }
    let defined: Vec<String> = hosts.keys().cloned().collect();
    Err(invalid(
        path,
        format!(
            "{}; other aliases are `*`, users (alice@example.com or alice@), group:NAME, tag:NAME, IPs and CIDRs",
            undefined("host", text, &defined)
        ),
    ))
}

/// "`what` `name` is not defined; defined: a, b".
fn undefined(what: &str, name: &str, defined: &[String]) -> String {
    if defined.is_empty() {
        format!("{what} `{name}` is not defined; no {what}s are defined")
    } else {
        format!(
            "{what} `{name}` is not defined; defined {what}s: {}",
            defined.join(", ")
        )
    }
}

/// Checks that `name` is usable as a ztmesh name.
pub(super) fn check_name(what: &str, name: &str, path: &str) -> Result<(), ImportError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!(
                "{}; rename it in the file and import again",
                invalid_name_reason(what, name)
            ),
        ))
    }
}

/// An IP address (as a single-address network) or a CIDR, host bits cleared.
pub(super) fn parse_network(text: &str) -> Option<IpNet> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(IpNet::from(address));
    }
    text.parse::<IpNet>().ok().map(|net| net.trunc())
}

/// Splits `ALIAS:PORTS` at the last colon (`[ADDRESS]:PORTS` for IPv6).
pub(super) fn split_destination<'a>(
    text: &'a str,
    path: &str,
) -> Result<(&'a str, &'a str), ImportError> {
    let no_port = || {
        invalid(
            path,
            format!(
                "destination `{text}` has no port; write ALIAS:PORTS such as tag:web:443, tag:web:80,443, tag:web:8000-8100 or tag:web:*"
            ),
        )
    };
    let (alias, ports) = match text.strip_prefix('[') {
        Some(rest) => {
            let (address, after) = rest.split_once(']').ok_or_else(no_port)?;
            (address, after.strip_prefix(':').ok_or_else(no_port)?)
        }
        None => text.rsplit_once(':').ok_or_else(no_port)?,
    };
    let port_like = ports
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ',' | '-' | '*' | ' '));
    if alias.is_empty() || ports.is_empty() || !port_like {
        return Err(no_port());
    }
    Ok((alias, ports))
}

/// An ACL entry's or test's `proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proto {
    /// Absent: TCP, UDP and ICMP for rules; TCP for tests.
    Default,
    /// `tcp` or 6.
    Tcp,
    /// `udp` or 17.
    Udp,
    /// `icmp`, 1, `ipv6-icmp` or 58.
    Icmp,
}

impl Proto {
    /// Parses `proto`: an IANA name or number, as a string or a number.
    pub(super) fn parse(value: Option<&Value>, path: &str) -> Result<Proto, ImportError> {
        let text = match value {
            None => return Ok(Proto::Default),
            Some(Value::String(text)) => text.to_ascii_lowercase(),
            Some(Value::Number(number)) => number.to_string(),
            Some(_) => {
                return Err(invalid(
                    path,
                    "expected a protocol name such as \"tcp\" or number such as \"6\"",
                ));
            }
        };
        match text.as_str() {
            "" => Ok(Proto::Default),
            "tcp" | "6" => Ok(Proto::Tcp),
            "udp" | "17" => Ok(Proto::Udp),
            "icmp" | "1" | "ipv6-icmp" | "icmpv6" | "58" => Ok(Proto::Icmp),
            "igmp" | "2" | "ipv4" | "ip-in-ip" | "4" | "egp" | "8" | "igp" | "9" | "gre" | "47"
            | "esp" | "50" | "ah" | "51" | "sctp" | "132" => Err(unsupported(
                path,
                format!(
                    "protocol `{text}`: ztmesh rules cover tcp, udp and icmp only; remove the entry or change its proto"
                ),
            )),
            other => Err(invalid(
                path,
                format!(
                    "`{other}` is not a protocol; write tcp, udp, icmp or an IANA number such as 6"
                ),
            )),
        }
    }

    /// The native port specs for `PORTS` of a destination under this protocol.
    pub(super) fn rule_ports(self, ports: &str, path: &str) -> Result<Vec<String>, ImportError> {
        let ranges = parse_ports(ports, path)?;
        let with_ports = |protocol: &str| match &ranges {
            None => vec![protocol.to_string()],
            Some(ranges) => ranges
                .iter()
                .map(|&(start, end)| match start == end {
                    true => format!("{protocol}/{start}"),
                    false => format!("{protocol}/{start}-{end}"),
                })
                .collect(),
        };
        Ok(match self {
            Proto::Default => {
                let mut specs = with_ports("tcp");
                specs.extend(with_ports("udp"));
                specs.push("icmp".to_string());
                specs
            }
            Proto::Tcp => with_ports("tcp"),
            Proto::Udp => with_ports("udp"),
            Proto::Icmp if ranges.is_none() => vec!["icmp".to_string()],
            Proto::Icmp => {
                return Err(invalid(
                    path,
                    format!("ICMP has no ports but `{ports}` is given; write ALIAS:*"),
                ));
            }
        })
    }

    /// The single flow a test destination's `PORT` names (TCP by default).
    pub(super) fn test_flow(self, port: &str, path: &str) -> Result<PortSpec, ImportError> {
        let protocol = match self {
            Proto::Default | Proto::Tcp => Protocol::Tcp,
            Proto::Udp => Protocol::Udp,
            Proto::Icmp => {
                return Ok(PortSpec {
                    protocol: Protocol::Icmp,
                    port: 0,
                });
            }
        };
        let single = |message: &str| invalid(path, format!("`{port}`: {message}"));
        match parse_ports(port, path)?.as_deref() {
            Some(&[(start, end)]) if start == end => Ok(PortSpec {
                protocol,
                port: start,
            }),
            _ => Err(single(
                "a test checks one port; write a single port such as 443",
            )),
        }
    }
}

/// Parses `*` (`None`: every port) or a comma list of ports and ranges.
fn parse_ports(text: &str, path: &str) -> Result<Option<Vec<(u16, u16)>>, ImportError> {
    if text.trim() == "*" {
        return Ok(None);
    }
    let mut ranges = Vec::new();
    for item in text.split(',').map(str::trim) {
        let (start, end) = match item.split_once('-') {
            Some((start, end)) => (parse_port(start, text, path)?, parse_port(end, text, path)?),
            None => {
                let port = parse_port(item, text, path)?;
                (port, port)
            }
        };
        if start > end {
            return Err(invalid(
                path,
                format!("ports `{text}`: range `{item}` starts after it ends"),
            ));
        }
        ranges.push((start, end));
    }
    Ok(Some(ranges))
}

/// One port number, 1-65535.
fn parse_port(item: &str, ports: &str, path: &str) -> Result<u16, ImportError> {
    match item.trim().parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(u16::try_from(port).unwrap_or(u16::MAX)),
        Ok(_) => Err(invalid(
            path,
            format!(
                "ports `{ports}`: `{item}` is out of range; ports are 1-65535 (write * for every port)"
            ),
        )),
        Err(_) => Err(invalid(
            path,
            format!("ports `{ports}`: `{item}` is not a port; write 443, 80,443, 8000-8100 or *"),
        )),
    }
}

/// The test endpoint for a test's source or destination alias.
pub(super) fn endpoint(alias: &Alias, path: &str) -> Result<Endpoint, ImportError> {
    let single = |net: &IpNet, name: &str| {
        if net.prefix_len() == net.max_prefix_len() {
            Ok(Endpoint::Address(net.addr()))
        } else {
            Err(invalid(
                path,
                format!(
                    "`{name}` is the network {net}; a test needs one device, so write an address inside it"
                ),
            ))
        }
    };
    match alias {
        Alias::All => Err(invalid(
            path,
            "`*` is every device; a test needs one: a user, tag, host or IP",
        )),
        Alias::Group(group) => Ok(Endpoint::Group(group.clone())),
        Alias::Tag(tag) => Ok(Endpoint::Tag(tag.clone())),
        Alias::User(user) => Ok(Endpoint::User(user.clone())),
        Alias::Host(name, net) => single(net, name),
        Alias::Net(net) => single(net, &net.to_string()),
    }
}

/// The segments made for aliases, and the identities `*` must list.
#[derive(Debug, Default)]
pub(super) struct SegmentTable {
    specs: BTreeMap<String, SegmentSpec>,
    uses_all: bool,
    tags: BTreeSet<String>,
    users: BTreeSet<String>,
}

impl SegmentTable {
    /// The segment for `alias`, made on first use.
    pub(super) fn segment_for(&mut self, alias: &Alias) -> String {
        let (name, spec) = match alias {
            Alias::All => {
                self.uses_all = true;
                return ALL.to_string();
            }
            Alias::Group(group) => (
                format!("group:{group}"),
                SegmentSpec {
                    groups: vec![group.clone()],
                    ..SegmentSpec::default()
                },
            ),
            Alias::Tag(tag) => (
                format!("tag:{tag}"),
                SegmentSpec {
                    tags: vec![tag.clone()],
                    ..SegmentSpec::default()
                },
            ),
            Alias::User(user) => (
                format!("user:{}", sanitize(user)),
                SegmentSpec {
                    users: vec![user.clone()],
                    ..SegmentSpec::default()
                },
            ),
            Alias::Host(host, net) => (format!("host:{host}"), cidr_spec(net)),
            Alias::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                (format!("ip:{}", net.addr()), cidr_spec(net))
            }
            Alias::Net(net) => (
                format!("net:{}_{}", net.addr(), net.prefix_len()),
                cidr_spec(net),
            ),
        };
        self.intern(name, spec)
    }

    /// Stores `spec` under `name`, or `name-2`, `name-3`, … when a different
    /// segment (a user whose name was sanitized the same way) has it.
    fn intern(&mut self, name: String, spec: SegmentSpec) -> String {
        let mut candidate = name.clone();
        for n in 2.. {
            match self.specs.get(&candidate) {
                None => {
                    self.specs.insert(candidate.clone(), spec);
                    break;
                }
                Some(existing) if *existing == spec => break,
                Some(_) => candidate = format!("{name}-{n}"),
            }
        }
        candidate
    }

    /// Remembers a tag for the `*` segment.
    pub(super) fn note_tag(&mut self, tag: &str) {
        self.tags.insert(tag.to_string());
    }

    /// Remembers a user for the `*` segment.
    pub(super) fn note_user(&mut self, user: &str) {
        self.users.insert(user.to_string());
    }

    /// Whether `*` was used.
    pub(super) fn uses_all(&self) -> bool {
        self.uses_all
    }

    /// The segments; `all`, if used, selects every address and lists every
    /// tag, user and group of the file, so that test endpoints (which have
    /// no address) match it as they would in Tailscale.
    pub(super) fn finish<'a>(
        mut self,
        groups: impl Iterator<Item = &'a String>,
    ) -> BTreeMap<String, SegmentSpec> {
        if self.uses_all {
            let all = SegmentSpec {
                cidrs: vec!["0.0.0.0/0".to_string(), "::/0".to_string()],
                tags: self.tags.into_iter().collect(),
                groups: groups.cloned().collect(),
                users: self.users.into_iter().collect(),
            };
            self.specs.insert(ALL.to_string(), all);
        }
        self.specs
    }
}

/// A segment selecting one network.
fn cidr_spec(net: &IpNet) -> SegmentSpec {
    SegmentSpec {
        cidrs: vec![net.to_string()],
        ..SegmentSpec::default()
    }
}

/// `name` with characters not allowed in segment names replaced by `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if is_valid_name(&c.to_string()) {
                c
            } else {
                '_'
            }
        })
        .collect()
}
