//! Daemon versions as posture requirements compare them: dotted numbers,
//! compared component by component (`1.10` > `1.9`, `1.0` == `1.0.0`), with
//! any pre-release (`-beta`) or build (`+abc`) suffix ignored.

use std::cmp::Ordering;
use std::fmt;

/// A parsed version; equality and order look at the numbers only.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    /// The text as written, for messages.
    text: String,
    /// The numeric components with trailing zeros removed, so that plain
    /// lexicographic order is version order.
    parts: Vec<u64>,
}

impl Version {
    /// Parses `N(.N)*`, optionally followed by `-…` or `+…`.
    pub(crate) fn parse(s: &str) -> Result<Version, String> {
        let numbers = s.split(['-', '+']).next().unwrap_or_default();
        let mut parts = Vec::new();
        for part in numbers.split('.') {
            let number = if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse::<u64>().ok()
            } else {
                None
            };
            match number {
                Some(number) => parts.push(number),
                None => {
                    return Err(format!(
                        "`{s}`: not a version; write dotted numbers such as 0.1.0 (a suffix after - is ignored)"
                    ));
                }
            }
        }
        while parts.last() == Some(&0) {
            parts.pop();
        }
        Ok(Version {
            text: s.to_string(),
            parts,
        })
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts.cmp(&other.parts)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn components_compare_numerically() {
        assert!(v("0.10.0") > v("0.9.9"));
        assert!(v("1.10") > v("1.9"));
        assert!(v("1.0.1") > v("1.0"));
        assert!(v("2") > v("1.99.99"));
        assert!(v("0.0.9") < v("0.1.0"));
        assert_eq!(v("1.0"), v("1.0.0"));
        assert_eq!(v("1"), v("1.0.0.0"));
        assert_eq!(v("01.2"), v("1.2"));
        assert_eq!(v("0"), v("0.0"));
    }

    #[test]
    fn suffixes_are_ignored_but_kept_for_display() {
        assert_eq!(v("1.2.3-beta"), v("1.2.3"));
        assert_eq!(v("1.2.3-rc.1+build.5"), v("1.2.3"));
        assert_eq!(v("1.2.3+abc"), v("1.2.3"));
        assert_eq!(v("1.2.3-beta").to_string(), "1.2.3-beta");
    }

    #[test]
    fn bad_versions_are_explained() {
        for bad in [
            "",
            "v1.0",
            "1..2",
            "1.",
            ".1",
            "1.x",
            "-beta",
            " 1.0",
            "1.0 ",
            "99999999999999999999",
        ] {
            let message = Version::parse(bad).unwrap_err();
            assert!(
                message.starts_with(&format!("`{bad}`: not a version")),
                "{bad}: {message}"
            );
        }
    }
}
