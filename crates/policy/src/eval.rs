//! Segment membership and first-match evaluation of single flows. Real
//! devices and hypothetical endpoints share one membership test
//! ([`Segment::contains`]), which keeps `evaluate` and `compile` consistent;
//! they differ only in posture, which hypothetical endpoints are assumed to
//! pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::slice;

use ipnet::IpNet;

use ztmesh_filter::{Action, PortRange, Protocol};

use crate::ports::{PortSpec, RulePort};
use crate::portset::PortSet;
use crate::posture::Requirement;
use crate::schedule::TimeCondition;
use crate::{Device, Endpoint, Policy, Posture};

/// The outcome of evaluating one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What happens to the flow.
    pub action: Action,
    /// Name of the deciding rule; `None` when no rule matched (default deny).
    pub rule: Option<String>,
    /// A deny that is only monitored (the rule or the destination's segment
    /// is in monitor mode): the flow is counted and logged, not dropped.
    pub monitor: bool,
}

impl Policy {
    /// Decides a single hypothetical flow (used by the policy's tests and by
    /// what-if queries): the first rule whose `from` segments contain `from`,
    /// whose `to` segments contain `to` and whose ports match `port` decides;
    /// no match means deny.
    ///
    /// Hypothetical endpoints have no posture report: they are assumed to
    /// pass every posture, so segments are matched on selectors alone. A real
    /// device failing a segment's posture is left out of that segment by
    /// [`Policy::segments_of`], [`Policy::compile`] and [`Policy::peers_of`]
    /// (see [`Policy::posture_checks`] for why).
    ///
    /// Rules with a `schedule` or `until` are treated as in force; see
    /// [`Policy::evaluate_at`] to decide at a given instant.
    pub fn evaluate(&self, from: &Endpoint, to: &Endpoint, port: &PortSpec) -> Decision {
        self.decide(
            &Subject::of_endpoint(from),
            &Subject::of_endpoint(to),
            port,
            None,
        )
    }

    /// [`Policy::evaluate`] at `now` (Unix seconds): rules outside their
    /// schedule or past their `until` are skipped.
    pub fn evaluate_at(
        &self,
        from: &Endpoint,
        to: &Endpoint,
        port: &PortSpec,
        now: i64,
    ) -> Decision {
        self.decide(
            &Subject::of_endpoint(from),
            &Subject::of_endpoint(to),
            port,
            Some(now),
        )
    }

    /// Decides a flow between two parties (real devices with their postures
    /// and addresses, users with their directory groups, or endpoints) at
    /// `now`, or with every rule in force when `None`. Between real devices
    /// this is exactly what their compiled filters decide.
    pub fn evaluate_parties(
        &self,
        from: Party<'_>,
        to: Party<'_>,
        port: &PortSpec,
        now: Option<i64>,
    ) -> Decision {
        self.decide(&Subject::of_party(from), &Subject::of_party(to), port, now)
    }

    /// Names of the segments `party` belongs to, sorted.
    pub fn segments_of_party(&self, party: Party<'_>) -> Vec<String> {
        self.segment_set(&Subject::of_party(party))
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// First match among the rules in force at `now` (all rules when `None`).
    fn decide(
        &self,
        from: &Subject<'_>,
        to: &Subject<'_>,
        port: &PortSpec,
        now: Option<i64>,
    ) -> Decision {
        let from_segments = self.segment_set(from);
        let to_segments = self.segment_set(to);
        let monitored = self.any_monitored(&to_segments);
        let deciding = self.rules.iter().find(|rule| {
            rule.in_force(now)
                && rule.applies(&from_segments, &to_segments)
                && rule.ports.iter().any(|spec| spec.matches(port))
        });
        match deciding {
            Some(rule) => Decision {
                action: rule.action,
                rule: Some(rule.name.clone()),
                monitor: rule.action == Action::Deny && (rule.monitor || monitored),
            },
            None => Decision {
                action: Action::Deny,
                rule: None,
                monitor: monitored,
            },
        }
    }

    /// The first of `segments` in monitor mode, if any.
    pub(crate) fn monitored_segment<'a>(&self, segments: &BTreeSet<&'a str>) -> Option<&'a str> {
        segments
            .iter()
            .copied()
            .find(|name| self.segments.get(*name).is_some_and(|s| s.monitor))
    }

    fn any_monitored(&self, segments: &BTreeSet<&str>) -> bool {
        self.monitored_segment(segments).is_some()
    }

    /// The first instant after `now` (Unix seconds) at which a rule's
    /// schedule opens or closes or its `until` passes: compiled filters and
    /// peer lists must be rebuilt then. `None` if no rule has a time
    /// condition ahead.
    pub fn next_change(&self, now: i64) -> Option<i64> {
        self.rules
            .iter()
            .filter_map(|rule| rule.time.next_change(now))
            .min()
    }

    /// Names of the segments `device` belongs to, sorted: a selector matches
    /// it and it passes every posture the segment requires.
    pub fn segments_of(&self, device: &Device) -> Vec<String> {
        self.segment_set(&Subject::of_device(device))
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Names of the segments containing `subject`.
    pub(crate) fn segment_set(&self, subject: &Subject<'_>) -> BTreeSet<&str> {
        self.segments
            .iter()
            .filter(|(_, segment)| segment.contains(subject))
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// One side of a what-if query ([`Policy::evaluate_parties`]).
#[derive(Debug, Clone, Copy)]
pub enum Party<'a> {
    /// A real device: its tags, owner, directory groups, name, addresses
    /// and last posture report all count.
    Device(&'a Device),
    /// A device of this user, with the user's directory groups; assumed to
    /// pass every posture.
    User {
        /// User name.
        name: &'a str,
        /// The user's groups in the directory.
        groups: &'a [String],
    },
    /// A hypothetical device with exactly the endpoint's one attribute.
    Endpoint(&'a Endpoint),
}

/// The attributes of a device, real or hypothetical, that segments match.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    tags: &'a [String],
    user: Option<&'a str>,
    device: Option<&'a str>,
    /// Directory groups (or the one group of a `group:` endpoint).
    groups: &'a [String],
    /// Overlay addresses (or the one address of an `ip:` endpoint).
    addresses: Addresses<'a>,
    compliance: Compliance<'a>,
}

/// A subject's addresses, as the device has them or as one endpoint address.
#[derive(Debug, Clone, Copy)]
enum Addresses<'a> {
    Networks(&'a [IpNet]),
    One(IpAddr),
}

impl Addresses<'_> {
    /// Whether one of the addresses lies inside `net`.
    fn any_in(&self, net: &IpNet) -> bool {
        match self {
            Addresses::Networks(nets) => nets.iter().any(|n| net.contains(&n.addr())),
            Addresses::One(address) => net.contains(address),
        }
    }
}

/// How a subject fares against posture requirements.
#[derive(Debug, Clone, Copy)]
enum Compliance<'a> {
    /// A hypothetical endpoint: passes every posture.
    Assumed,
    /// A real device, with its last report (`None`: never reported, fails
    /// every posture).
    Reported(Option<&'a Posture>),
}

impl<'a> Subject<'a> {
    /// A real device: its tags, owner, directory groups, name and posture.
    pub(crate) fn of_device(device: &'a Device) -> Subject<'a> {
        Subject {
            tags: &device.tags,
            user: device.user.as_deref(),
            device: Some(&device.name),
            groups: &device.groups,
            addresses: Addresses::Networks(&device.addresses),
            compliance: Compliance::Reported(device.posture.as_ref()),
        }
    }

    /// The subject of a what-if party.
    fn of_party(party: Party<'a>) -> Subject<'a> {
        match party {
            Party::Device(device) => Subject::of_device(device),
            Party::Endpoint(endpoint) => Subject::of_endpoint(endpoint),
            Party::User { name, groups } => Subject {
                tags: &[],
                user: Some(name),
                device: None,
                groups,
                addresses: Addresses::Networks(&[]),
                compliance: Compliance::Assumed,
            },
        }
    }

    /// A hypothetical device with exactly the endpoint's one attribute.
    pub(crate) fn of_endpoint(endpoint: &'a Endpoint) -> Subject<'a> {
        let mut subject = Subject {
            tags: &[],
            user: None,
            device: None,
            groups: &[],
            addresses: Addresses::Networks(&[]),
            compliance: Compliance::Assumed,
        };
        match endpoint {
            Endpoint::Tag(tag) => subject.tags = slice::from_ref(tag),
            Endpoint::User(user) => subject.user = Some(user),
            Endpoint::Device(name) => subject.device = Some(name),
            Endpoint::Group(group) => subject.groups = slice::from_ref(group),
            Endpoint::Address(address) => subject.addresses = Addresses::One(*address),
        }
        subject
    }
}

/// A segment with its selectors resolved: groups are expanded to their
/// listed users, posture names to their requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Device tags.
    pub tags: BTreeSet<String>,
    /// Device owners.
    pub users: BTreeSet<String>,
    /// Group names, matched by directory groups and `group:` endpoints.
    pub groups: BTreeSet<String>,
    /// Users listed in `[groups]` for every group in `groups` (matched by owners).
    pub group_users: BTreeSet<String>,
    /// Device names.
    pub devices: BTreeSet<String>,
    /// Networks containing the selected devices' overlay addresses.
    pub cidrs: Vec<IpNet>,
    /// Posture name -> requirement; a real device must pass them all.
    pub postures: BTreeMap<String, Requirement>,
    /// Devices in the segment count and log what would be dropped, and
    /// drop nothing.
    pub monitor: bool,
}

impl Segment {
    /// Whether `subject` is in the segment: a selector matches and it
    /// passes every posture.
    pub(crate) fn contains(&self, subject: &Subject<'_>) -> bool {
        self.selects(subject)
            && match subject.compliance {
                Compliance::Assumed => true,
                Compliance::Reported(posture) => self
                    .postures
                    .values()
                    .all(|requirement| requirement.passes(posture)),
            }
    }

    /// Whether any selector matches `subject`, posture aside.
    pub(crate) fn selects(&self, subject: &Subject<'_>) -> bool {
        subject.tags.iter().any(|tag| self.tags.contains(tag))
            || subject
                .user
                .is_some_and(|user| self.users.contains(user) || self.group_users.contains(user))
            || subject
                .device
                .is_some_and(|name| self.devices.contains(name))
            || subject
                .groups
                .iter()
                .any(|group| self.groups.contains(group))
            || self.cidrs.iter().any(|net| subject.addresses.any_in(net))
    }
}

/// A validated rule, with its ports also kept in the two derived shapes that
/// compilation and peer computation need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Unique name.
    pub name: String,
    /// Source segments (all defined).
    pub from: Vec<String>,
    /// Destination segments (all defined).
    pub to: Vec<String>,
    /// Port specs as written.
    pub ports: Vec<RulePort>,
    /// What a matching flow gets.
    pub action: Action,
    /// Ports grouped per protocol for compiled filter rules.
    pub filter_ports: Vec<(Protocol, Vec<PortRange>)>,
    /// Every flow the rule matches.
    pub port_set: PortSet,
    /// A deny rule that only counts and logs.
    pub monitor: bool,
    /// When the rule applies.
    pub time: TimeCondition,
    /// Byte offset of the rule's name in the policy text (for warnings).
    pub offset: usize,
}

impl Rule {
    /// Whether the rule applies between a source in `from_segments` and a
    /// destination in `to_segments` (ports aside).
    pub(crate) fn applies(
        &self,
        from_segments: &BTreeSet<&str>,
        to_segments: &BTreeSet<&str>,
    ) -> bool {
        self.from.iter().any(|s| from_segments.contains(s.as_str()))
            && self.to.iter().any(|s| to_segments.contains(s.as_str()))
    }

    /// Whether the rule is in force at `now`; every rule is when `None`.
    pub(crate) fn in_force(&self, now: Option<i64>) -> bool {
        now.is_none_or(|now| self.time.active_at(now))
    }
}

/// The policy word for an action.
pub(crate) fn action_word(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[groups]
eng = ["alice@example.com", "bob@example.com"]

[segments]
laptops = { groups = ["eng"] }
admins = { users = ["carol@example.com"] }
web = { tags = ["web"] }
db = { tags = ["db"], devices = ["legacy-db-1"] }

[[rules]]
name = "no-ssh-to-db"
from = ["laptops"]
to = ["db"]
ports = ["tcp/22"]
action = "deny"

[[rules]]
name = "eng-to-servers"
from = ["laptops"]
to = ["web", "db"]
ports = ["tcp/443", "tcp/22", "tcp/5432", "icmp"]

[[rules]]
name = "admins-anything"
from = ["admins"]
to = ["web", "db", "laptops"]
ports = ["any"]
"#;

    fn decide(policy: &Policy, from: &str, to: &str, port: &str) -> (Action, Option<String>) {
        let decision = policy.evaluate(
            &Endpoint::parse(from).unwrap(),
            &Endpoint::parse(to).unwrap(),
            &PortSpec::parse(port).unwrap(),
        );
        (decision.action, decision.rule)
    }

    #[test]
    fn first_match_wins_and_default_is_deny() {
        let policy = Policy::parse(POLICY).unwrap();
        let allow = |rule: &str| (Action::Allow, Some(rule.to_string()));
        let deny = |rule: &str| (Action::Deny, Some(rule.to_string()));
        assert_eq!(
            decide(&policy, "alice@example.com", "tag:db", "tcp/22"),
            deny("no-ssh-to-db")
        );
        assert_eq!(
            decide(&policy, "alice@example.com", "tag:web", "tcp/22"),
            allow("eng-to-servers")
        );
        assert_eq!(
            decide(
                &policy,
                "user:bob@example.com",
                "device:legacy-db-1",
                "tcp/5432"
            ),
            allow("eng-to-servers")
        );
        assert_eq!(
            decide(&policy, "group:eng", "tag:web", "icmp"),
            allow("eng-to-servers")
        );
        assert_eq!(
            decide(&policy, "carol@example.com", "tag:db", "udp/53"),
            allow("admins-anything")
        );
        assert_eq!(
            decide(
                &policy,
                "carol@example.com",
                "user:alice@example.com",
                "tcp/22"
            ),
            allow("admins-anything")
        );
        // No rule matches: default deny, no rule named.
        assert_eq!(
            decide(&policy, "tag:web", "tag:db", "tcp/5432"),
            (Action::Deny, None)
        );
        assert_eq!(
            decide(&policy, "alice@example.com", "tag:web", "udp/443"),
            (Action::Deny, None)
        );
        assert_eq!(
            decide(&policy, "mallory@example.com", "tag:web", "tcp/443"),
            (Action::Deny, None)
        );
        assert_eq!(
            decide(&policy, "group:ops", "tag:web", "tcp/443"),
            (Action::Deny, None)
        );
    }

    #[test]
    fn cidr_selectors_match_overlay_addresses_and_ip_endpoints() {
        let policy = Policy::parse(
            r#"
[segments]
lab = { cidrs = ["100.64.8.0/24", "fd7a:115c::/48"] }
web = { tags = ["web"] }

[[rules]]
name = "lab-to-web"
from = ["lab"]
to = ["web"]
ports = ["tcp/443"]

[[tests]]
from = "ip:100.64.8.9"
to = "tag:web"
port = "tcp/443"
expect = "allow"

[[tests]]
from = "ip:fd7a:115c::7"
to = "tag:web"
port = "tcp/443"
expect = "allow"

[[tests]]
from = "ip:100.64.9.1"
to = "tag:web"
port = "tcp/443"
expect = "deny"
"#,
        )
        .unwrap();
        let device = |address: &str| Device {
            id: address.to_string(),
            name: address.to_string(),
            user: None,
            tags: Vec::new(),
            addresses: vec![address.parse().unwrap()],
            groups: Vec::new(),
            posture: None,
        };
        assert_eq!(policy.segments_of(&device("100.64.8.200/32")), ["lab"]);
        assert!(policy.segments_of(&device("100.64.7.1/32")).is_empty());
        assert_eq!(policy.segments_of(&device("fd7a:115c::1/128")), ["lab"]);

        let error =
            Policy::parse("[segments]\nlab = { cidrs = [\"100.64.8.0/33\"] }\n").unwrap_err();
        assert_eq!((error.line, error.column), (2, 18));
        assert!(error.message.contains("is not a network"), "{error}");
        let error = Endpoint::parse("ip:100.64.300.1").unwrap_err();
        assert!(error.contains("not an IP address"), "{error}");
    }

    #[test]
    fn devices_belong_to_segments_by_any_selector() {
        let policy = Policy::parse(POLICY).unwrap();
        let device = |name: &str, user: Option<&str>, tags: &[&str]| Device {
            id: format!("id-{name}"),
            name: name.to_string(),
            user: user.map(str::to_string),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            addresses: Vec::new(),
            groups: Vec::new(),
            posture: None,
        };
        assert_eq!(
            policy.segments_of(&device("a", Some("alice@example.com"), &[])),
            ["laptops"]
        );
        assert_eq!(
            policy.segments_of(&device("legacy-db-1", None, &[])),
            ["db"]
        );
        assert_eq!(
            policy.segments_of(&device("s", None, &["db", "web"])),
            ["db", "web"]
        );
        assert_eq!(
            policy.segments_of(&device("c", Some("carol@example.com"), &["web"])),
            ["admins", "web"]
        );
        assert!(
            policy
                .segments_of(&device("x", Some("eve@example.com"), &["other"]))
                .is_empty()
        );
    }
}
