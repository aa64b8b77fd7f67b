//! Conversions between wire messages and domain types.

use ipnet::IpNet;
use ztmesh_filter::{Action, FilterConfig, FilterRule, PortRange, Protocol};

use crate::v1;

/// A message from the peer could not be turned into a domain value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConversionError {
    /// A CIDR string did not parse.
    #[error("invalid address prefix `{0}`")]
    Cidr(String),
    /// An enum field carried a value this version does not know.
    #[error("unknown {field} value {value}")]
    UnknownEnum {
        /// Which field.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
    /// A port number was outside 0..=65535 or a range was inverted.
    #[error("invalid port range {start}-{end}")]
    PortRange {
        /// Start as sent.
        start: u32,
        /// End as sent.
        end: u32,
    },
    /// A public key was not 32 bytes.
    #[error("public key must be 32 bytes, got {0}")]
    KeyLength(usize),
}

/// Parses a list of CIDR strings (a bare address is taken as a host prefix).
pub fn parse_cidrs(items: &[String]) -> Result<Vec<IpNet>, ConversionError> {
    items
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| ConversionError::Cidr(s.clone()))
        })
        .collect()
}

/// Checks that a public key has the X25519 length and returns it as an array.
pub fn parse_public_key(bytes: &[u8]) -> Result<[u8; 32], ConversionError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| ConversionError::KeyLength(bytes.len()))
}

/// Domain filter to wire message.
pub fn filter_to_proto(config: &FilterConfig) -> v1::Filter {
    v1::Filter {
        version: config.version,
        rules: config
            .rules
            .iter()
            .map(|rule| v1::FilterRule {
                name: rule.name.clone(),
                action: match rule.action {
                    Action::Allow => v1::Action::Allow,
                    Action::Deny => v1::Action::Deny,
                } as i32,
                sources: rule.sources.iter().map(ToString::to_string).collect(),
                destinations: rule.destinations.iter().map(ToString::to_string).collect(),
                protocol: match rule.protocol {
                    Protocol::Tcp => v1::Protocol::Tcp,
                    Protocol::Udp => v1::Protocol::Udp,
                    Protocol::Icmp => v1::Protocol::Icmp,
                    Protocol::Any => v1::Protocol::Any,
                } as i32,
                ports: rule
                    .ports
                    .iter()
                    .map(|p| v1::PortRange {
                        start: u32::from(p.start),
                        end: u32::from(p.end),
                    })
                    .collect(),
                monitor: rule.monitor,
            })
            .collect(),
    }
}

/// Wire message to domain filter; rejects the whole filter on any bad field
/// (a filter is applied whole or not at all).
pub fn filter_from_proto(filter: &v1::Filter) -> Result<FilterConfig, ConversionError> {
    let rules = filter
        .rules
        .iter()
        .map(|rule| {
            let action = match v1::Action::try_from(rule.action) {
                Ok(v1::Action::Allow) => Action::Allow,
                Ok(v1::Action::Deny) => Action::Deny,
                _ => {
                    return Err(ConversionError::UnknownEnum {
                        field: "action",
                        value: rule.action,
                    });
                }
            };
            let protocol = match v1::Protocol::try_from(rule.protocol) {
                Ok(v1::Protocol::Tcp) => Protocol::Tcp,
                Ok(v1::Protocol::Udp) => Protocol::Udp,
                Ok(v1::Protocol::Icmp) => Protocol::Icmp,
                Ok(v1::Protocol::Any) => Protocol::Any,
                _ => {
                    return Err(ConversionError::UnknownEnum {
                        field: "protocol",
                        value: rule.protocol,
                    });
                }
            };
            let ports = rule
                .ports
                .iter()
                .map(|p| match (u16::try_from(p.start), u16::try_from(p.end)) {
                    (Ok(start), Ok(end)) if start <= end => Ok(PortRange { start, end }),
                    _ => Err(ConversionError::PortRange {
                        start: p.start,
                        end: p.end,
                    }),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(FilterRule {
                name: rule.name.clone(),
                action,
                sources: parse_cidrs(&rule.sources)?,
                destinations: parse_cidrs(&rule.destinations)?,
                protocol,
                ports,
                monitor: rule.monitor,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(FilterConfig {
        version: filter.version,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_round_trips() {
        let config = FilterConfig {
            version: 7,
            rules: vec![FilterRule {
                name: "web".into(),
                action: Action::Deny,
                sources: vec!["100.64.0.1/32".parse().unwrap()],
                destinations: vec!["100.64.0.2/32".parse().unwrap()],
                protocol: Protocol::Tcp,
                ports: vec![PortRange { start: 80, end: 90 }],
                monitor: true,
            }],
        };
        assert_eq!(
            filter_from_proto(&filter_to_proto(&config)).unwrap(),
            config
        );
    }

    #[test]
    fn bad_wire_values_are_errors() {
        let mut wire = filter_to_proto(&FilterConfig {
            version: 1,
            rules: vec![FilterRule {
                name: "r".into(),
                action: Action::Allow,
                sources: vec![],
                destinations: vec![],
                protocol: Protocol::Any,
                ports: vec![],
                monitor: false,
            }],
        });
        wire.rules[0].protocol = 99;
        assert!(matches!(
            filter_from_proto(&wire),
            Err(ConversionError::UnknownEnum { .. })
        ));
        wire.rules[0].protocol = v1::Protocol::Tcp as i32;
        wire.rules[0].ports = vec![v1::PortRange {
            start: 9,
            end: 70000,
        }];
        assert!(matches!(
            filter_from_proto(&wire),
            Err(ConversionError::PortRange { .. })
        ));
        wire.rules[0].ports.clear();
        wire.rules[0].sources = vec!["nonsense".into()];
        assert_eq!(
            filter_from_proto(&wire),
            Err(ConversionError::Cidr("nonsense".into()))
        );
        assert_eq!(
            parse_public_key(&[0; 31]),
            Err(ConversionError::KeyLength(31))
        );
    }
}
