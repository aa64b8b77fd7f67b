//! Admin roles and the table of which role may call which RPC.
//!
//! The table is `proto/ztmesh/v1/admin-roles.md`, compiled in: the file
//! people read is the file the server enforces. It is parsed once at start
//! and checked against the Admin service in the compiled descriptor; a
//! malformed table, an RPC missing from it or a row naming no RPC stops the
//! server. At run time an RPC the table does not name is callable by nobody.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use prost::Message;

/// The role table as written in the repository.
pub const ROLE_TABLE: &str = include_str!("../../../../proto/ztmesh/v1/admin-roles.md");

/// Full name of the service the table is about.
pub const ADMIN_SERVICE: &str = "ztmesh.v1.Admin";

/// What an admin API key may do, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read-only: listings, policy, settings and the audit log.
    Auditor,
    /// Reads and changes the policy; reads devices, users and groups.
    PolicyEditor,
    /// Everything except managing owner and admin keys.
    Admin,
    /// Everything.
    Owner,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::PolicyEditor, Role::Auditor];

    /// The name used in keys, the table and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::PolicyEditor => "policy-editor",
            Role::Auditor => "auditor",
        }
    }

    /// Whether a key of this role may create or revoke keys of `other`:
    /// owners manage every key, other roles only less powerful ones (so an
    /// admin can neither mint another admin key nor revoke an owner's).
    pub fn may_manage(self, other: Role) -> bool {
        self == Role::Owner || other < self
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = RoleTableError;

    fn from_str(s: &str) -> Result<Role, RoleTableError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| RoleTableError::UnknownRole(s.to_owned()))
    }
}

/// Why the role table cannot be used. Each message names the line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoleTableError {
    /// A role name that is not one of the four.
    #[error("unknown role `{0}`; roles are owner, admin, policy-editor, auditor")]
    UnknownRole(String),
    /// No `| RPC | owner | ...` header line.
    #[error("no table header `| RPC | owner | admin | policy-editor | auditor |` found")]
    NoHeader,
    /// The header does not name every role exactly once.
    #[error("line {0}: the header must name each of owner, admin, policy-editor, auditor once")]
    BadHeader(usize),
    /// A row with the wrong number of cells or a cell other than yes/no.
    #[error("line {line}: {message}")]
    BadRow {
        /// 1-based line number in admin-roles.md.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The same RPC twice.
    #[error("line {line}: RPC `{rpc}` is listed twice")]
    Duplicate {
        /// 1-based line number of the second row.
        line: usize,
        /// The RPC.
        rpc: String,
    },
    /// The table and the service disagree.
    #[error(
        "admin-roles.md does not match the Admin service: missing from the table: [{}]; in the table but not in the service: [{}]. Every RPC must have exactly one row",
        missing.join(", "),
        unknown.join(", ")
    )]
    Mismatch {
        /// RPCs of the service with no row.
        missing: Vec<String>,
        /// Rows naming no RPC of the service.
        unknown: Vec<String>,
    },
    /// The compiled descriptor could not be read or has no Admin service.
    #[error("the compiled descriptor set is unusable: {0}")]
    Descriptor(String),
}

/// RPC name -> roles allowed to call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleTable {
    allowed: BTreeMap<String, BTreeSet<Role>>,
}

impl RoleTable {
    /// The compiled-in table, checked against the compiled-in service.
    pub fn builtin() -> Result<RoleTable, RoleTableError> {
        let table = RoleTable::parse(ROLE_TABLE)?;
        table.check_against(&admin_rpcs(ztmesh_proto::FILE_DESCRIPTOR_SET)?)?;
        Ok(table)
    }

    /// Parses the markdown table: a header `| RPC | <roles> |`, a separator
    /// line, then one row per RPC with `yes` or `no` per role. Text outside
    /// the table is ignored; the first table with an `RPC` header is used.
    pub fn parse(text: &str) -> Result<RoleTable, RoleTableError> {
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
        let (header_line, header) = lines
            .by_ref()
            .find(|(_, l)| cells(l).is_some_and(|c| c.first() == Some(&"RPC")))
            .ok_or(RoleTableError::NoHeader)?;
        let columns: Vec<Role> = cells(header)
            .unwrap_or_default()
            .iter()
            .skip(1)
            .map(|c| c.parse())
            .collect::<Result<_, _>>()?;
        let distinct: BTreeSet<Role> = columns.iter().copied().collect();
        if columns.len() != Role::ALL.len() || distinct.len() != Role::ALL.len() {
            return Err(RoleTableError::BadHeader(header_line));
        }
        let mut allowed = BTreeMap::new();
        for (line, text) in lines {
            let Some(row) = cells(text) else {
                break; // the table ended
            };
            if row
                .iter()
                .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':')))
            {
                continue; // separator
            }
            let (rpc, marks) = row.split_first().ok_or_else(|| RoleTableError::BadRow {
                line,
                message: "empty row".to_owned(),
            })?;
            let rpc = rpc.trim_matches('`');
            if rpc.is_empty() || !rpc.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(RoleTableError::BadRow {
                    line,
                    message: format!("`{rpc}` is not an RPC name"),
                });
            }
            if marks.len() != columns.len() {
                return Err(RoleTableError::BadRow {
                    line,
                    message: format!(
                        "{} cells for {} roles; write yes or no for each role",
                        marks.len(),
                        columns.len()
                    ),
                });
            }
            let mut roles = BTreeSet::new();
            for (role, mark) in columns.iter().zip(marks) {
                match *mark {
                    "yes" => {
                        roles.insert(*role);
                    }
                    "no" => {}
                    other => {
                        return Err(RoleTableError::BadRow {
                            line,
                            message: format!("`{other}` in column {role}: write yes or no"),
                        });
                    }
                }
            }
            if allowed.insert(rpc.to_owned(), roles).is_some() {
                return Err(RoleTableError::Duplicate {
                    line,
                    rpc: rpc.to_owned(),
                });
            }
        }
        Ok(RoleTable { allowed })
    }

    /// Fails unless the table has exactly one row per RPC in `rpcs`.
    pub fn check_against(&self, rpcs: &BTreeSet<String>) -> Result<(), RoleTableError> {
        let missing: Vec<String> = rpcs
            .iter()
            .filter(|r| !self.allowed.contains_key(*r))
            .cloned()
            .collect();
        let unknown: Vec<String> = self
            .allowed
            .keys()
            .filter(|r| !rpcs.contains(*r))
            .cloned()
            .collect();
        if missing.is_empty() && unknown.is_empty() {
            Ok(())
        } else {
            Err(RoleTableError::Mismatch { missing, unknown })
        }
    }

    /// Whether `role` may call `rpc`; an RPC not in the table: nobody.
    pub fn allows(&self, rpc: &str, role: Role) -> bool {
        self.allowed
            .get(rpc)
            .is_some_and(|roles| roles.contains(&role))
    }

    /// The roles that may call `rpc`, most powerful first (for messages).
    pub fn roles_for(&self, rpc: &str) -> Vec<Role> {
        let mut roles: Vec<Role> = self
            .allowed
            .get(rpc)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default();
        roles.reverse();
        roles
    }

    /// Every RPC in the table.
    pub fn rpcs(&self) -> impl Iterator<Item = &str> {
        self.allowed.keys().map(String::as_str)
    }
}

/// The method names of `ztmesh.v1.Admin` in an encoded descriptor set.
pub fn admin_rpcs(descriptor_set: &[u8]) -> Result<BTreeSet<String>, RoleTableError> {
    let set = prost_types::FileDescriptorSet::decode(descriptor_set)
        .map_err(|e| RoleTableError::Descriptor(e.to_string()))?;
    let (package, service) = ADMIN_SERVICE
        .rsplit_once('.')
        .ok_or_else(|| RoleTableError::Descriptor("bad service name".to_owned()))?;
    set.file
        .iter()
        .filter(|f| f.package() == package)
        .flat_map(|f| &f.service)
        .find(|s| s.name() == service)
        .map(|s| s.method.iter().map(|m| m.name().to_owned()).collect())
        .ok_or_else(|| RoleTableError::Descriptor(format!("no service {ADMIN_SERVICE}")))
}

/// The cells of a markdown table row, or `None` if `line` is not one.
fn cells(line: &str) -> Option<Vec<&str>> {
    let inner = line.strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(str::trim).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_table_matches_the_service() {
        let table = RoleTable::builtin().unwrap();
        for rpc in table.rpcs() {
            assert!(table.allows(rpc, Role::Owner), "owner may call {rpc}");
        }
        assert!(!table.allows("NoSuchRpc", Role::Owner), "fail closed");
    }

    #[test]
    fn malformed_tables_are_refused_with_the_line() {
        let header = "| RPC | owner | admin | policy-editor | auditor |\n|---|---|---|---|---|\n";
        assert_eq!(RoleTable::parse("no table"), Err(RoleTableError::NoHeader));
        let bad_cell = format!("{header}| GetPolicy | yes | yes | maybe | no |\n");
        assert!(matches!(
            RoleTable::parse(&bad_cell),
            Err(RoleTableError::BadRow { line: 3, .. })
        ));
        let short = format!("{header}| GetPolicy | yes | yes |\n");
        assert!(matches!(
            RoleTable::parse(&short),
            Err(RoleTableError::BadRow { line: 3, .. })
        ));
        let twice = format!("{header}| A | yes | no | no | no |\n| A | yes | no | no | no |\n");
        assert!(matches!(
            RoleTable::parse(&twice),
            Err(RoleTableError::Duplicate { line: 4, .. })
        ));
        let missing_role = "| RPC | owner | admin | auditor |\n";
        assert_eq!(
            RoleTable::parse(missing_role),
            Err(RoleTableError::BadHeader(1))
        );
        let table = RoleTable::parse(&format!("{header}| A | yes | no | no | yes |\n")).unwrap();
        assert!(table.allows("A", Role::Auditor) && !table.allows("A", Role::Admin));
        let err = table
            .check_against(&["A".to_owned(), "B".to_owned()].into())
            .unwrap_err();
        assert!(
            err.to_string().contains("missing from the table: [B]"),
            "{err}"
        );
    }

    #[test]
    fn who_manages_which_keys() {
        assert!(Role::Owner.may_manage(Role::Owner));
        assert!(Role::Admin.may_manage(Role::PolicyEditor));
        assert!(!Role::Admin.may_manage(Role::Admin));
        assert!(!Role::Admin.may_manage(Role::Owner));
        assert!(!Role::Auditor.may_manage(Role::Auditor));
    }
}
