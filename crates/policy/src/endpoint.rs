//! Endpoints of hypothetical flows (`tag:web`, `user:alice@example.com`, …),
//! and name checks shared with validation.

use std::fmt;
use std::net::IpAddr;

/// A hypothetical device with exactly one attribute, as used by the policy's
/// tests and by what-if queries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A device carrying this tag.
    Tag(String),
    /// A device owned by this user.
    User(String),
    /// The device with this name.
    Device(String),
    /// A device whose owner is in this group.
    Group(String),
    /// A device with this overlay address (matched by `cidrs` selectors).
    Address(IpAddr),
}

impl Endpoint {
    /// Parses `tag:NAME`, `user:NAME`, `device:NAME`, `group:NAME`,
    /// `ip:ADDRESS`, or a bare string containing `@`, which is a user.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let help = "use tag:NAME, user:NAME, device:NAME, group:NAME or ip:ADDRESS (a bare name with @ is a user)";
        // A bare user: an address with no `kind:` prefix.
        if s.contains('@') && !s.contains(':') {
            return Ok(Endpoint::User(s.to_string()));
        }
        let Some((kind, name)) = s.split_once(':') else {
            return Err(format!("`{s}`: not an endpoint; {help}"));
        };
        if name.is_empty() {
            return Err(format!("`{s}`: the name after `{kind}:` is empty; {help}"));
        }
        let endpoint = match kind {
            "tag" => Endpoint::Tag(name.to_string()),
            "user" => Endpoint::User(name.to_string()),
            "device" => Endpoint::Device(name.to_string()),
            "group" => Endpoint::Group(name.to_string()),
            "ip" => Endpoint::Address(name.parse().map_err(|_| {
                format!("`{s}`: `{name}` is not an IP address; write ip:100.64.0.5 or ip:fd7a::5")
            })?),
            _ => return Err(format!("`{s}`: unknown endpoint kind `{kind}`; {help}")),
        };
        if let Endpoint::Tag(name) | Endpoint::Group(name) = &endpoint
            && !is_valid_name(name)
        {
            return Err(format!("`{s}`: {}", invalid_name_reason(kind, name)));
        }
        Ok(endpoint)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tag(name) => write!(f, "tag:{name}"),
            Endpoint::User(name) => write!(f, "user:{name}"),
            Endpoint::Device(name) => write!(f, "device:{name}"),
            Endpoint::Group(name) => write!(f, "group:{name}"),
            Endpoint::Address(address) => write!(f, "ip:{address}"),
        }
    }
}

/// Whether `name` is a valid segment, tag, group or rule name: non-empty,
/// made of `[A-Za-z0-9_.@:-]`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | ':' | '-'))
}

/// The message for an invalid `what` name (`what` is "segment", "tag", …).
pub(crate) fn invalid_name_reason(what: &str, name: &str) -> String {
    format!(
        "{what} name `{name}` is invalid; names must be non-empty and use only letters, digits and _ . @ : -"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_display() {
        let cases = [
            ("tag:web", Endpoint::Tag("web".into())),
            (
                "user:alice@example.com",
                Endpoint::User("alice@example.com".into()),
            ),
            (
                "alice@example.com",
                Endpoint::User("alice@example.com".into()),
            ),
            ("device:legacy-db-1", Endpoint::Device("legacy-db-1".into())),
            ("group:eng", Endpoint::Group("eng".into())),
        ];
        for (text, endpoint) in cases {
            assert_eq!(Endpoint::parse(text), Ok(endpoint.clone()), "{text}");
            let shown = endpoint.to_string();
            assert_eq!(Endpoint::parse(&shown), Ok(endpoint));
        }
        assert_eq!(
            Endpoint::parse("alice@example.com").unwrap().to_string(),
            "user:alice@example.com"
        );
    }

    #[test]
    fn bad_endpoints_are_explained() {
        assert!(
            Endpoint::parse("db")
                .unwrap_err()
                .contains("not an endpoint")
        );
        assert!(
            Endpoint::parse("host:db")
                .unwrap_err()
                .contains("unknown endpoint kind `host`")
        );
        assert!(Endpoint::parse("tag:").unwrap_err().contains("is empty"));
        assert!(
            Endpoint::parse("tag:a b")
                .unwrap_err()
                .contains("tag name `a b` is invalid")
        );
        assert!(Endpoint::parse("").is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(is_valid_name("eng-to-web_1.x@y:z"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("é"));
    }
}
