//! Checking `[postures]` and the `posture` lists of segments.

use std::collections::BTreeMap;

use ipnet::IpNet;
use toml::Spanned;

use super::{check_name, undefined};
use crate::error::Problems;
use crate::model::{PostureFile, Text};
use crate::posture::{Check, Requirement, builtin_postures};
use crate::version::Version;

/// The fields a posture may set, for the "no requirements" message.
const FIELDS: &str = "min_daemon_version, os, disk_encrypted, firewall, locations";

/// Checks every declared posture; returns name -> requirement, built-ins
/// included.
pub(super) fn check_postures(
    postures: &BTreeMap<Text, PostureFile>,
    problems: &mut Problems<'_>,
) -> BTreeMap<String, Requirement> {
    let mut checked = builtin_postures();
    for (name, file) in postures {
        check_name("posture", name, problems);
        let posture = name.get_ref();
        if checked.contains_key(posture) {
            problems.add(
                name.span(),
                format!(
                    "posture `{posture}` is built in; use it without declaring it, or choose another name"
                ),
            );
            continue;
        }
        let mut checks = Vec::new();
        if let Some(version) = &file.min_daemon_version {
            match Version::parse(version.get_ref()) {
                Ok(version) => checks.push(Check::MinDaemonVersion(version)),
                Err(message) => problems.add(version.span(), message),
            }
        }
        if let Some(os) = &file.os {
            let list = check_list(posture, "os", "an os such as linux", os, problems);
            let list = list.iter().map(|os| os.get_ref().to_lowercase());
            checks.push(Check::Os(list.collect()));
        }
        for (field, flag, check) in [
            ("disk_encrypted", &file.disk_encrypted, Check::DiskEncrypted),
            ("firewall", &file.firewall, Check::Firewall),
        ] {
            match flag.as_ref().map(|flag| (flag, *flag.get_ref())) {
                Some((_, true)) => checks.push(check),
                Some((flag, false)) => problems.add(
                    flag.span(),
                    format!(
                        "posture `{posture}`: `{field} = false` requires nothing; set it to true or remove it"
                    ),
                ),
                None => {}
            }
        }
        if let Some(locations) = &file.locations {
            let what = "a network such as 203.0.113.0/24";
            let mut networks = Vec::new();
            for location in check_list(posture, "locations", what, locations, problems) {
                match location.get_ref().parse::<IpNet>() {
                    Ok(network) => networks.push(network.trunc()),
                    Err(_) => problems.add(
                        location.span(),
                        format!(
                            "`{}`: not a network; write a CIDR such as 203.0.113.0/24 or 2001:db8::/32",
                            location.get_ref()
                        ),
                    ),
                }
            }
            checks.push(Check::Locations(networks));
        }
        let declared_none = file.min_daemon_version.is_none()
            && file.os.is_none()
            && file.disk_encrypted.is_none()
            && file.firewall.is_none()
            && file.locations.is_none();
        if declared_none {
            problems.add(
                name.span(),
                format!("posture `{posture}` requires nothing; set at least one of {FIELDS}"),
            );
        }
        checked.insert(posture.clone(), Requirement::new(checks));
    }
    checked
}

/// Resolves a segment's posture names; an undefined name is a problem.
pub(super) fn segment_postures(
    names: &[Text],
    postures: &BTreeMap<String, Requirement>,
    problems: &mut Problems<'_>,
) -> BTreeMap<String, Requirement> {
    let mut resolved = BTreeMap::new();
    for name in names {
        match postures.get(name.get_ref()) {
            Some(requirement) => {
                resolved.insert(name.get_ref().clone(), requirement.clone());
            }
            None => problems.add(
                name.span(),
                undefined("posture", name.get_ref(), postures.keys()),
            ),
        }
    }
    resolved
}

/// A posture's list field: non-empty, no empty entries. Returns the entries.
fn check_list<'a>(
    posture: &str,
    field: &str,
    what: &str,
    list: &'a Spanned<Vec<Text>>,
    problems: &mut Problems<'_>,
) -> &'a [Text] {
    if list.get_ref().is_empty() {
        problems.add(
            list.span(),
            format!("posture `{posture}`: `{field}` is empty; list at least one, e.g. {what}"),
        );
    }
    for entry in list
        .get_ref()
        .iter()
        .filter(|e| e.get_ref().trim().is_empty())
    {
        problems.add(
            entry.span(),
            format!(
                "posture `{posture}`: `{field}` lists an empty entry; remove it or write {what}"
            ),
        );
    }
    list.get_ref()
}
