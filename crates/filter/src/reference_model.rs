//! The reference model for the property test in `model_tests`: a list
//! scan of the rules plus a `Vec` of opened flows, no hashing and no
//! timeouts (the test never moves `now`).

use std::net::IpAddr;

use crate::test_packets::PacketBuilder;
use crate::{Action, DropReason, FilterConfig, FilterRule, Protocol, Verdict};

/// What a model packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    EchoRequest(u16),
    EchoReply(u16),
    IcmpError,
    Gre,
}

/// A model packet; [`Pkt::bytes`] serializes it for the real filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pkt {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    pub(crate) kind: Kind,
    /// Serialize one byte short (always malformed).
    pub(crate) truncated: bool,
}

impl Pkt {
    pub(crate) fn reversed(self) -> Pkt {
        let kind = match self.kind {
            Kind::Tcp {
                src_port,
                dst_port,
                flags,
            } => Kind::Tcp {
                src_port: dst_port,
                dst_port: src_port,
                flags,
            },
            Kind::Udp { src_port, dst_port } => Kind::Udp {
                src_port: dst_port,
                dst_port: src_port,
            },
            Kind::EchoRequest(id) => Kind::EchoReply(id),
            Kind::EchoReply(id) => Kind::EchoRequest(id),
            other => other,
        };
        Pkt {
            src: self.dst,
            dst: self.src,
            kind,
            truncated: self.truncated,
        }
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let (src, dst) = (self.src, self.dst);
        let builder = match self.kind {
            Kind::Tcp {
                src_port,
                dst_port,
                flags,
            } => PacketBuilder::tcp(src, src_port, dst, dst_port).flags(flags),
            Kind::Udp { src_port, dst_port } => PacketBuilder::udp(src, src_port, dst, dst_port),
            Kind::EchoRequest(id) => PacketBuilder::echo_request(src, dst, id),
            Kind::EchoReply(id) => PacketBuilder::echo_reply(src, dst, id),
            Kind::IcmpError => PacketBuilder::icmp(src, dst, error_type(src), 0),
            Kind::Gre => PacketBuilder::raw(src, dst, 47, &[0, 0, 8, 0]),
        };
        let mut bytes = builder.build();
        if self.truncated {
            bytes.pop();
        }
        bytes
    }

    /// An ICMP error sent back to this packet's source, quoting it whole.
    pub(crate) fn error_about(self) -> (Pkt, Vec<u8>) {
        let quoted = Pkt {
            truncated: false,
            ..self
        };
        let error = Pkt {
            src: self.dst,
            dst: self.src,
            kind: Kind::IcmpError,
            truncated: false,
        };
        let bytes = PacketBuilder::icmp_error(
            error.src,
            error.dst,
            error_type(error.src),
            0,
            &quoted.bytes(),
        )
        .build();
        (error, bytes)
    }
}

/// Destination unreachable (ICMPv4 3, ICMPv6 1).
pub(crate) fn error_type(src: IpAddr) -> u8 {
    if src.is_ipv6() { 1 } else { 3 }
}

/// A flow in the model: which packets belong to it, from this device's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conversation {
    /// TCP, UDP or another protocol: both endpoints, ports 0 when portless.
    Ports {
        proto: u8,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
    },
    /// An ICMP echo exchange; `local_requests` says who sends the requests.
    Echo {
        local: IpAddr,
        remote: IpAddr,
        id: u16,
        local_requests: bool,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct ModelFlow {
    pub(crate) conversation: Conversation,
    pub(crate) opened_inbound: bool,
    pub(crate) opener: Pkt,
    pub(crate) revoked: bool,
}

/// The reference filter.
#[derive(Debug, Default)]
pub(crate) struct Model {
    pub(crate) version: u64,
    pub(crate) rules: Vec<FilterRule>,
    pub(crate) flows: Vec<ModelFlow>,
}

impl Model {
    pub(crate) fn outbound(&mut self, p: Pkt) -> Verdict {
        if p.truncated {
            return Verdict::Drop(DropReason::Malformed);
        }
        if let Some(conversation) = conversation(&p, false)
            && !matches!(p.kind, Kind::EchoReply(_))
            && !self.flows.iter().any(|f| f.conversation == conversation)
        {
            self.flows.push(ModelFlow {
                conversation,
                opened_inbound: false,
                opener: p,
                revoked: false,
            });
        }
        Verdict::Accept
    }

    /// An inbound ICMP error quoting `quoted`, which this device sent.
    pub(crate) fn inbound_error(&mut self, quoted: Pkt, error: Pkt) -> Verdict {
        let quoted = Pkt {
            truncated: false,
            ..quoted
        };
        if let Some(c) = conversation(&quoted, false)
            && self.flows.iter().any(|f| f.conversation == c && !f.revoked)
        {
            return Verdict::Accept;
        }
        self.inbound(error)
    }

    pub(crate) fn inbound(&mut self, p: Pkt) -> Verdict {
        if p.truncated {
            return Verdict::Drop(DropReason::Malformed);
        }
        let conversation = conversation(&p, true);
        if let Some(c) = conversation
            && self.flows.iter().any(|f| f.conversation == c && !f.revoked)
        {
            return Verdict::Accept;
        }
        if self.version == 0 {
            return Verdict::Drop(DropReason::NoPolicy);
        }
        match self
            .rules
            .iter()
            .find(|r| model_matches(r, &p))
            .map(|r| (r.action, r.monitor))
        {
            None => Verdict::Drop(DropReason::NoRule),
            Some((Action::Deny, false)) => Verdict::Drop(DropReason::Denied),
            Some((Action::Allow, _) | (Action::Deny, true)) => {
                if let Some(c) = conversation
                    && !matches!(p.kind, Kind::EchoReply(_))
                {
                    self.flows.retain(|f| f.conversation != c);
                    self.flows.push(ModelFlow {
                        conversation: c,
                        opened_inbound: true,
                        opener: p,
                        revoked: false,
                    });
                }
                Verdict::Accept
            }
        }
    }

    pub(crate) fn apply(&mut self, config: &FilterConfig) {
        self.version = config.version;
        self.rules = config.rules.clone();
        for flow in self.flows.iter_mut().filter(|f| f.opened_inbound) {
            let allowed = self.version > 0
                && self
                    .rules
                    .iter()
                    .find(|r| model_matches(r, &flow.opener))
                    .is_some_and(|r| r.action == Action::Allow || r.monitor);
            if !allowed {
                flow.revoked = true;
            }
        }
    }
}

pub(crate) fn conversation(p: &Pkt, inbound: bool) -> Option<Conversation> {
    let (local, remote) = if inbound {
        (p.dst, p.src)
    } else {
        (p.src, p.dst)
    };
    let ports = |proto: u8, src_port: u16, dst_port: u16| {
        let (local_port, remote_port) = if inbound {
            (dst_port, src_port)
        } else {
            (src_port, dst_port)
        };
        Conversation::Ports {
            proto,
            local: (local, local_port),
            remote: (remote, remote_port),
        }
    };
    match p.kind {
        Kind::Tcp {
            src_port, dst_port, ..
        } => Some(ports(6, src_port, dst_port)),
        Kind::Udp { src_port, dst_port } => Some(ports(17, src_port, dst_port)),
        Kind::Gre => Some(ports(47, 0, 0)),
        // A request is sent by the requester; a reply is sent to it.
        Kind::EchoRequest(id) | Kind::EchoReply(id) => Some(Conversation::Echo {
            local,
            remote,
            id,
            local_requests: matches!(p.kind, Kind::EchoRequest(_)) != inbound,
        }),
        Kind::IcmpError => None,
    }
}

pub(crate) fn model_matches(rule: &FilterRule, p: &Pkt) -> bool {
    let protocol = match rule.protocol {
        Protocol::Tcp => matches!(p.kind, Kind::Tcp { .. }),
        Protocol::Udp => matches!(p.kind, Kind::Udp { .. }),
        Protocol::Icmp => matches!(p.kind, Kind::EchoRequest(_)),
        Protocol::Any => true,
    };
    let dst_port = match p.kind {
        Kind::Tcp { dst_port, .. } | Kind::Udp { dst_port, .. } => Some(dst_port),
        _ => None,
    };
    let ports = rule.ports.is_empty()
        || rule.protocol == Protocol::Icmp
        || dst_port.is_some_and(|d| rule.ports.iter().any(|r| r.start <= d && d <= r.end));
    rule.sources.iter().any(|n| n.contains(&p.src))
        && rule.destinations.iter().any(|n| n.contains(&p.dst))
        && protocol
        && ports
}
