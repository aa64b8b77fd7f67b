//! Import of other systems' access policies into the native format, so that
//! their users can move over: the result is policy text to review, validate
//! and set, plus warnings about what was deliberately left out.
//!
//! Pure like the rest of the crate: text in, text out. An import never
//! silently changes what a policy allows: anything without a faithful
//! equivalent is an [`ImportError`] naming where it is and what to do, and
//! the converted policy is checked against the source file's own tests.

mod hujson;
mod native;
mod tailscale;

use ztmesh_filter::Action;

use crate::eval::action_word;
use crate::{Policy, PolicyError};
use native::NativePolicy;

/// A converted policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The native policy (TOML), ready for [`crate::Policy::parse`]; it
    /// carries the source file's tests as `[[tests]]`.
    pub policy: String,
    /// Parts of the source that were left out because they grant no network
    /// access in ztmesh terms, and things to do after the import; one
    /// sentence each.
    pub warnings: Vec<String>,
}

/// Why a file could not be imported. Paths are JSON paths into the source
/// file such as `acls[2].dst[1]` (indices from 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The file is not valid HuJSON (JSON with comments and trailing commas).
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// Line, starting at 1.
        line: usize,
        /// Column in characters, starting at 1.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A construct that ztmesh cannot express exactly (grants, postures,
    /// autogroups, IP sets, protocols other than TCP, UDP and ICMP, …);
    /// importing it anyway would change what the policy allows.
    #[error("{path}: {message}")]
    Unsupported {
        /// Where, e.g. `acls[0].src[2]`.
        path: String,
        /// What, why, and what to do.
        message: String,
    },
    /// A malformed value or a reference to something undefined (an unknown
    /// group or host, a port out of range, a wrong JSON type, …).
    #[error("{path}: {message}")]
    Invalid {
        /// Where, e.g. `acls[1].dst[0]`.
        path: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// One of the source file's own tests decides differently on the
    /// converted policy (for example a test that relies on a device's
    /// address while the rule names its user).
    #[error("{path}: {message}")]
    TestFails {
        /// The test entry, e.g. `tests[0].deny[1]`.
        path: String,
        /// The flow, what the test expects and what the converted policy does.
        message: String,
    },
    /// The converted policy was rejected by [`crate::Policy::parse`]: a bug
    /// in the importer, never in the input.
    #[error(
        "the converted policy was rejected ({0}); this is a bug in the importer, please report it with the input file"
    )]
    Generated(PolicyError),
}

/// Converts a Tailscale or headscale policy file (HuJSON) into a native
/// policy.
///
/// Carried over: `groups`, `hosts`, `acls` (`src`/`dst`, or the legacy
/// `users`/`ports`, and `proto`) and `tests`. Each Tailscale alias becomes a
/// segment with a readable name: `tag:web`, `group:eng`,
/// `user:alice@example.com`, `host:NAME`, `ip:ADDRESS`, `net:ADDRESS_PREFIX`;
/// `*` becomes `all`, which selects every device by address
/// (`0.0.0.0/0` and `::/0`). ACL entry `acls[N]` becomes rule `acl-N`,
/// split into `acl-N-b`, `acl-N-c`, … when its destinations carry
/// different ports. Tailscale ACLs only allow, so rule order does not
/// matter. Groups become ztmesh groups, which also take members from the
/// ztmesh user directory; a warning says to check that.
///
/// Protocols: Tailscale documents (`tailcfg.FilterRule.IPProto`: "nil or
/// empty means TCP, UDP, and ICMP"; headscale matches it) that an entry
/// without `proto` covers TCP and UDP on the listed ports, plus ICMP, so
/// `tag:web:443` becomes `tcp/443`, `udp/443` and `icmp`, and `*` becomes
/// `tcp`, `udp` and `icmp` (not `any`, which would also admit other IP
/// protocols). `proto` `tcp`/`6`, `udp`/`17` map to that protocol alone;
/// `icmp`/`1` and `ipv6-icmp`/`58` map to `icmp` (ztmesh's `icmp` is echo
/// requests over IPv4 and IPv6; Tailscale clients admit ICMP of either
/// family to any address a rule opens). Other protocols are an error. A
/// test without `proto` checks TCP.
///
/// Left out with a warning (no network access in ztmesh terms): `tagOwners`
/// (ztmesh grants tags through join tokens), `ssh`, `sshTests`,
/// `nodeAttrs`, `autoApprovers`, `derpMap`, `randomizeClientPort`,
/// `disableIPv4`, `OneCGNATRoute`. Errors: `grants`, `postures`,
/// `srcPosture`, `autogroup:*`, `ipsets`, unknown keys, actions other than
/// `accept`, destinations without a port, undefined groups and hosts.
pub fn import_tailscale(text: &str) -> Result<Imported, ImportError> {
    tailscale::import(text)
}

/// Renders `native` and checks it: without its tests it must parse, each
/// imported test must decide as the source file expects (an error names the
/// test's origin), and the full text must parse.
fn checked_text(native: &NativePolicy) -> Result<String, ImportError> {
    let policy = Policy::parse(&native.render(false)).map_err(ImportError::Generated)?;
    for test in &native.tests {
        let decision = policy.evaluate(&test.from, &test.to, &test.port);
        if decision.action == test.expect {
            continue;
        }
        let got = action_word(decision.action);
        let by = match &decision.rule {
            Some(rule) => format!("rule `{rule}` decides {got}"),
            None if decision.action == Action::Deny => {
                "no rule matches, so it is denied".to_string()
            }
            None => format!("the default decides {got}"),
        };
        return Err(ImportError::TestFails {
            path: test.origin.clone(),
            message: format!(
                "the test expects {} from {} to {} on {}, but on the converted policy {by}; a ztmesh test endpoint has one attribute (a tag, user, group or address), so make the test name the device the way the ACLs do, or fix the ACLs, and import again",
                action_word(test.expect),
                test.from,
                test.to,
                test.port,
            ),
        });
    }
    let text = native.render(true);
    Policy::parse(&text).map_err(ImportError::Generated)?;
    Ok(text)
}
