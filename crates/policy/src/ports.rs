//! Port specs: the `ports` of a rule (`tcp/443`, `tcp/8000-8100`, `udp`,
//! `icmp`, `any`), the single flow of a test or what-if query ([`PortSpec`]),
//! and how a rule's specs are grouped into compiled filter rules.

use std::fmt;

use ztmesh_filter::{PortRange, Protocol};

/// What every rule port-spec error suggests instead.
const RULE_PORT_HELP: &str = "use tcp/PORT, udp/PORT, tcp/LOW-HIGH, icmp, tcp, udp or any";

/// One flow of a test or what-if query: a protocol and a destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// `Tcp`, `Udp` or `Icmp` (a hand-built `Any` only matches rules allowing `any`).
    pub protocol: Protocol,
    /// Destination port for TCP and UDP; 0 for ICMP.
    pub port: u16,
}

impl PortSpec {
    /// Parses `tcp/N`, `udp/N` (N in 1-65535) or `icmp`.
    pub fn parse(s: &str) -> Result<PortSpec, String> {
        let (protocol, rest) = match s.split_once('/') {
            Some((protocol, rest)) => (protocol, Some(rest)),
            None => (s, None),
        };
        let protocol = match (protocol.to_ascii_lowercase().as_str(), rest) {
            ("icmp", None) => {
                return Ok(PortSpec {
                    protocol: Protocol::Icmp,
                    port: 0,
                });
            }
            ("tcp", Some(_)) => Protocol::Tcp,
            ("udp", Some(_)) => Protocol::Udp,
            _ => {
                return Err(format!(
                    "`{s}`: unknown flow; use tcp/PORT, udp/PORT or icmp"
                ));
            }
        };
        let rest = rest.unwrap_or_default();
        if rest.contains('-') {
            return Err(format!(
                "`{s}`: a flow has a single port; use tcp/PORT, udp/PORT or icmp"
            ));
        }
        let port = parse_port(s, rest)?;
        Ok(PortSpec { protocol, port })
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Protocol::Tcp => write!(f, "tcp/{}", self.port),
            Protocol::Udp => write!(f, "udp/{}", self.port),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Any => f.write_str("any"),
        }
    }
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RulePort {
    /// `any`: every protocol and port.
    Any,
    /// `icmp`: ICMP echo.
    Icmp,
    /// `tcp`, `udp` (every port, `range` is `None`) or `tcp/…`, `udp/…`.
    Ports {
        /// `Tcp` or `Udp`.
        protocol: Protocol,
        /// The ports, or `None` for all of them.
        range: Option<PortRange>,
    },
}

impl RulePort {
    /// Parses one rule port spec; the error names the spec and what to write.
    pub(crate) fn parse(s: &str) -> Result<RulePort, String> {
        let (protocol, rest) = match s.split_once('/') {
            Some((protocol, rest)) => (protocol.to_ascii_lowercase(), Some(rest)),
            None => (s.to_ascii_lowercase(), None),
        };
        let protocol = match (protocol.as_str(), rest) {
            ("any", None) => return Ok(RulePort::Any),
            ("icmp", None) => return Ok(RulePort::Icmp),
            ("any" | "icmp", Some(_)) => {
                return Err(format!("`{s}`: {protocol} takes no port; write {protocol}"));
            }
            ("tcp", _) => Protocol::Tcp,
            ("udp", _) => Protocol::Udp,
            _ => return Err(format!("`{s}`: unknown protocol; {RULE_PORT_HELP}")),
        };
        let Some(rest) = rest else {
            return Ok(RulePort::Ports {
                protocol,
                range: None,
            });
        };
        let (start, end) = match rest.split_once('-') {
            Some((start, end)) => (parse_port(s, start)?, parse_port(s, end)?),
            None => {
                let port = parse_port(s, rest)?;
                (port, port)
            }
        };
        if start > end {
            return Err(format!("`{s}`: range start is after its end"));
        }
        Ok(RulePort::Ports {
            protocol,
            range: Some(PortRange { start, end }),
        })
    }

    /// Whether this spec covers the flow `spec`.
    pub(crate) fn matches(&self, spec: &PortSpec) -> bool {
        match *self {
            RulePort::Any => true,
            RulePort::Icmp => spec.protocol == Protocol::Icmp,
            RulePort::Ports { protocol, range } => {
                spec.protocol == protocol && range.is_none_or(|range| range.contains(spec.port))
            }
        }
    }
}

/// Groups a rule's port specs per protocol, as compiled filter rules carry
/// them: `any` absorbs everything; per protocol, a bare `tcp`/`udp` means all
/// ports (empty list), otherwise the ranges merged and sorted. Order: TCP,
/// UDP, ICMP.
pub(crate) fn group_by_protocol(ports: &[RulePort]) -> Vec<(Protocol, Vec<PortRange>)> {
    if ports.contains(&RulePort::Any) {
        return vec![(Protocol::Any, Vec::new())];
    }
    let mut grouped = Vec::new();
    for wanted in [Protocol::Tcp, Protocol::Udp] {
        let mut all = false;
        let mut ranges = Vec::new();
        for port in ports {
            if let RulePort::Ports { protocol, range } = *port
                && protocol == wanted
            {
                match range {
                    Some(range) => ranges.push(range),
                    None => all = true,
                }
            }
        }
        if all {
            grouped.push((wanted, Vec::new()));
        } else if !ranges.is_empty() {
            grouped.push((wanted, merge_ranges(ranges)));
        }
    }
    if ports.contains(&RulePort::Icmp) {
        grouped.push((Protocol::Icmp, Vec::new()));
    }
    grouped
}

/// Sorts ranges and merges those that overlap or touch.
pub(crate) fn merge_ranges(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(range.end);
            }
            _ => merged.push(range),
        }
    }
    merged
}

/// Parses the port number `text` inside the spec `spec` (named in errors).
fn parse_port(spec: &str, text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{spec}`: `{text}` is not a port number; {RULE_PORT_HELP}"
        ));
    }
    // Only digits remain, so a parse failure means the number is too large.
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("`{spec}`: port out of range (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u16, end: u16) -> PortRange {
        PortRange { start, end }
    }

    #[test]
    fn rule_ports_parse() {
        assert_eq!(RulePort::parse("any"), Ok(RulePort::Any));
        assert_eq!(RulePort::parse("icmp"), Ok(RulePort::Icmp));
        assert_eq!(
            RulePort::parse("tcp"),
            Ok(RulePort::Ports {
                protocol: Protocol::Tcp,
                range: None
            })
        );
        assert_eq!(
            RulePort::parse("udp/53"),
            Ok(RulePort::Ports {
                protocol: Protocol::Udp,
                range: Some(range(53, 53))
            })
        );
        assert_eq!(
            RulePort::parse("tcp/8000-8100"),
            Ok(RulePort::Ports {
                protocol: Protocol::Tcp,
                range: Some(range(8000, 8100))
            })
        );
    }

    #[test]
    fn rule_port_errors_say_what_to_write() {
        assert_eq!(
            RulePort::parse("tcp/70000").unwrap_err(),
            "`tcp/70000`: port out of range (1-65535)"
        );
        assert_eq!(
            RulePort::parse("tcp/0").unwrap_err(),
            "`tcp/0`: port out of range (1-65535)"
        );
        assert_eq!(
            RulePort::parse("tcp/90-80").unwrap_err(),
            "`tcp/90-80`: range start is after its end"
        );
        assert_eq!(
            RulePort::parse("sctp/1").unwrap_err(),
            "`sctp/1`: unknown protocol; use tcp/PORT, udp/PORT, tcp/LOW-HIGH, icmp, tcp, udp or any"
        );
        assert!(
            RulePort::parse("tcp/http")
                .unwrap_err()
                .contains("not a port number")
        );
        assert!(
            RulePort::parse("tcp/")
                .unwrap_err()
                .contains("not a port number")
        );
        assert!(
            RulePort::parse("icmp/8")
                .unwrap_err()
                .contains("icmp takes no port")
        );
        assert!(
            RulePort::parse("tcp/99999999999999999999")
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn flows_parse_and_display() {
        let flow = PortSpec::parse("tcp/443").unwrap();
        assert_eq!((flow.protocol, flow.port), (Protocol::Tcp, 443));
        assert_eq!(flow.to_string(), "tcp/443");
        assert_eq!(PortSpec::parse("udp/53").unwrap().to_string(), "udp/53");
        assert_eq!(PortSpec::parse("icmp").unwrap().to_string(), "icmp");
        assert!(PortSpec::parse("tcp").is_err());
        assert!(PortSpec::parse("any").is_err());
        assert!(
            PortSpec::parse("tcp/1-2")
                .unwrap_err()
                .contains("single port")
        );
        assert!(
            PortSpec::parse("tcp/0")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            PortSpec::parse("sctp/1")
                .unwrap_err()
                .contains("unknown flow")
        );
    }

    #[test]
    fn rule_ports_match_flows() {
        let https = PortSpec::parse("tcp/443").unwrap();
        let dns = PortSpec::parse("udp/53").unwrap();
        let ping = PortSpec::parse("icmp").unwrap();
        let any = RulePort::Any;
        assert!(any.matches(&https) && any.matches(&dns) && any.matches(&ping));
        let tcp = RulePort::parse("tcp").unwrap();
        assert!(tcp.matches(&https) && !tcp.matches(&dns) && !tcp.matches(&ping));
        let web = RulePort::parse("tcp/440-450").unwrap();
        assert!(web.matches(&https) && !web.matches(&PortSpec::parse("tcp/451").unwrap()));
        assert!(RulePort::Icmp.matches(&ping) && !RulePort::Icmp.matches(&dns));
    }

    #[test]
    fn grouping_merges_and_sorts_per_protocol() {
        let ports: Vec<RulePort> = [
            "tcp/443",
            "udp/53",
            "tcp/22",
            "tcp/8000-8100",
            "tcp/8050-8200",
            "tcp/23",
            "icmp",
        ]
        .iter()
        .map(|s| RulePort::parse(s).unwrap())
        .collect();
        assert_eq!(
            group_by_protocol(&ports),
            vec![
                (
                    Protocol::Tcp,
                    vec![range(22, 23), range(443, 443), range(8000, 8200)]
                ),
                (Protocol::Udp, vec![range(53, 53)]),
                (Protocol::Icmp, vec![]),
            ]
        );
        let all_tcp = [
            RulePort::parse("tcp/22").unwrap(),
            RulePort::parse("tcp").unwrap(),
        ];
        assert_eq!(group_by_protocol(&all_tcp), vec![(Protocol::Tcp, vec![])]);
        let any = [RulePort::parse("tcp/22").unwrap(), RulePort::Any];
        assert_eq!(group_by_protocol(&any), vec![(Protocol::Any, vec![])]);
    }
}
