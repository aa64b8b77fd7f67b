//! Policy calls of the Admin service: get, set, validate, what-if check,
//! history and rollback.

use std::collections::BTreeSet;

use tonic::Status;
use ztmesh_policy::{Endpoint, Party, Policy, PortSpec, format_utc};
use ztmesh_proto::v1;

use super::AdminService;
use crate::error::internal;
use crate::netmap::{NetworkState, Standing, policy_device, standing};
use crate::store::{Actor, PolicyRecord, unix_now};

/// Largest policy text accepted.
const MAX_POLICY_BYTES: usize = 1024 * 1024;
/// Versions listed when the request gives no limit, and the most listed.
const DEFAULT_HISTORY: u32 = 50;
const MAX_HISTORY: u32 = 1000;
/// Longest comment kept with a version.
const MAX_COMMENT_CHARS: usize = 500;

/// Parses a policy text for the API: size limit, then the policy's own checks.
pub(super) fn parse_policy(text: &str) -> Result<Policy, Status> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(Status::invalid_argument("the policy is larger than 1 MiB"));
    }
    Policy::parse(text).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn check_comment(comment: &str) -> Result<(), Status> {
    if comment.chars().count() > MAX_COMMENT_CHARS || comment.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "the comment must be one line of at most {MAX_COMMENT_CHARS} characters"
        )));
    }
    Ok(())
}

impl AdminService {
    /// The policy's own warnings, then tags and users the network does not
    /// know (likely typos).
    async fn warnings(&self, policy: &Policy) -> Result<Vec<String>, Status> {
        let state = self.hub.current();
        let mut tags: BTreeSet<String> = self
            .store
            .join_token_tags()
            .await
            .map_err(internal)?
            .into_iter()
            .collect();
        tags.extend(state.devices().iter().flat_map(|d| d.tags.iter().cloned()));
        let users: BTreeSet<String> = state.users().keys().cloned().collect();
        Ok(policy
            .warnings()
            .iter()
            .chain(policy.unknown_references(&tags, &users).iter())
            .map(ToString::to_string)
            .collect())
    }

    pub(super) async fn get_policy_impl(
        &self,
        req: v1::GetPolicyRequest,
    ) -> Result<v1::GetPolicyResponse, Status> {
        let record = match req.version {
            0 => self.store.latest_policy().await.map_err(internal)?,
            version => Some(self.stored_version(version).await?),
        };
        Ok(match record {
            Some(r) => v1::GetPolicyResponse {
                text: r.text,
                version: r.version,
                created_at: r.created_at,
                author: r.author,
            },
            None => v1::GetPolicyResponse::default(),
        })
    }

    pub(super) async fn set_policy_impl(
        &self,
        actor: &Actor,
        req: v1::SetPolicyRequest,
    ) -> Result<v1::SetPolicyResponse, Status> {
        check_comment(&req.comment)?;
        let policy = parse_policy(&req.text)?;
        self.store_policy(actor, &req.text, &req.comment, &policy, "policy.set")
            .await
    }

    pub(super) async fn validate_policy_impl(
        &self,
        req: v1::ValidatePolicyRequest,
    ) -> Result<v1::ValidatePolicyResponse, Status> {
        let policy = parse_policy(&req.text)?;
        Ok(v1::ValidatePolicyResponse {
            rules: u32::try_from(policy.rule_count()).unwrap_or(u32::MAX),
            segments: u32::try_from(policy.segment_names().count()).unwrap_or(u32::MAX),
            warnings: self.warnings(&policy).await?,
        })
    }

    pub(super) async fn list_policy_versions_impl(
        &self,
        req: v1::ListPolicyVersionsRequest,
    ) -> Result<v1::ListPolicyVersionsResponse, Status> {
        let limit = match req.limit {
            0 => DEFAULT_HISTORY,
            n => n.min(MAX_HISTORY),
        };
        let records = self.store.policy_versions(limit).await.map_err(internal)?;
        let newest = records.first().map(|r| r.version);
        let versions = records
            .into_iter()
            .map(|r| v1::PolicyVersion {
                version: r.version,
                current: Some(r.version) == newest,
                rules: Policy::parse(&r.text)
                    .map(|p| u32::try_from(p.rule_count()).unwrap_or(u32::MAX))
                    .unwrap_or(0),
                author: r.author,
                created_at: r.created_at,
                comment: r.comment,
            })
            .collect();
        Ok(v1::ListPolicyVersionsResponse { versions })
    }

    pub(super) async fn rollback_policy_impl(
        &self,
        actor: &Actor,
        req: v1::RollbackPolicyRequest,
    ) -> Result<v1::SetPolicyResponse, Status> {
        check_comment(&req.comment)?;
        let record = self.stored_version(req.version).await?;
        // Checked again: it must still parse with this server's rules.
        let policy = Policy::parse(&record.text).map_err(|e| {
            Status::failed_precondition(format!(
                "version {} no longer passes validation ({e}); fix it and set it as a new version",
                record.version
            ))
        })?;
        let comment = match req.comment.as_str() {
            "" => format!("rollback to version {}", record.version),
            note => format!("rollback to version {}: {note}", record.version),
        };
        self.store_policy(actor, &record.text, &comment, &policy, "policy.rollback")
            .await
    }

    /// Stores an accepted policy as the newest version, audits it and
    /// pushes it to every daemon.
    async fn store_policy(
        &self,
        actor: &Actor,
        text: &str,
        comment: &str,
        policy: &Policy,
        action: &str,
    ) -> Result<v1::SetPolicyResponse, Status> {
        let before = self
            .store
            .latest_policy()
            .await
            .map_err(internal)?
            .map_or_else(String::new, |p| {
                serde_json::json!({ "version": p.version }).to_string()
            });
        let version = self
            .store
            .insert_policy(text, &actor.id, comment)
            .await
            .map_err(internal)?;
        let after = serde_json::json!({ "version": version, "comment": comment }).to_string();
        self.store
            .audit(
                actor,
                action,
                &format!("version {version}"),
                &before,
                &after,
            )
            .await
            .map_err(internal)?;
        self.hub.reload().await.map_err(internal)?;
        tracing::info!(version, action, "policy updated");
        self.hub.events().publish(
            "policy.version",
            &format!("version {version}"),
            format!("{action} by {actor}: {comment}"),
        );
        Ok(v1::SetPolicyResponse {
            version,
            warnings: self.warnings(policy).await?,
        })
    }

    async fn stored_version(&self, version: u64) -> Result<PolicyRecord, Status> {
        self.store
            .policy_version(version)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "there is no policy version {version}; `ztmesh admin policy history` lists them"
                ))
            })
    }

    pub(super) fn check_policy_impl(
        &self,
        req: v1::CheckPolicyRequest,
    ) -> Result<v1::CheckPolicyResponse, Status> {
        let state = self.hub.current();
        let candidate = match req.policy_text.as_str() {
            "" => None,
            text => Some(parse_policy(text)?),
        };
        let (policy, version) = match &candidate {
            Some(policy) => (policy, 0),
            None => (state.policy(), state.policy_version()),
        };
        let port = PortSpec::parse(&req.port).map_err(Status::invalid_argument)?;
        let now = match req.at {
            0 => unix_now(),
            at => at,
        };
        let from = Resolved::of(&state, &req.from, "from")?;
        let to = Resolved::of(&state, &req.to, "to")?;
        let mut notes: Vec<String> = [&from, &to].iter().flat_map(|r| r.notes(policy)).collect();
        let decision = policy.evaluate_parties(from.party(), to.party(), &port, Some(now));
        let (action, explanation) = match (&decision.rule, decision.action) {
            (Some(rule), ztmesh_filter::Action::Allow) => {
                ("allow", format!("allowed by rule `{rule}`"))
            }
            (Some(rule), ztmesh_filter::Action::Deny) => {
                ("deny", format!("denied by rule `{rule}`"))
            }
            (None, _) => ("deny", "denied: no rule matched (default deny)".to_owned()),
        };
        let explanation = if decision.monitor {
            format!("{explanation}; monitor mode: the flow is counted and logged, and passes")
        } else {
            explanation
        };
        let blocked = [&from, &to].iter().any(|r| r.is_blocked());
        let action = if blocked {
            notes.push("a device that is not active has no tunnels: nothing reaches it or leaves it, whatever the policy says".into());
            "deny"
        } else {
            action
        };
        if req.at != 0 {
            notes.push(format!("decided as of {}", format_utc(now)));
        }
        Ok(v1::CheckPolicyResponse {
            action: action.to_owned(),
            rule: decision.rule.unwrap_or_default(),
            monitor: decision.monitor && !blocked,
            from_segments: policy.segments_of_party(from.party()),
            to_segments: policy.segments_of_party(to.party()),
            explanation,
            policy_version: version,
            notes,
        })
    }
}

/// One side of a what-if query, resolved against the directory.
enum Resolved {
    Device {
        device: Box<ztmesh_policy::Device>,
        standing: Standing,
    },
    User {
        name: String,
        groups: Vec<String>,
    },
    Endpoint(Endpoint),
}

impl Resolved {
    /// A device name first, then `kind:NAME` endpoints, then users.
    fn of(state: &NetworkState, text: &str, field: &str) -> Result<Resolved, Status> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Status::invalid_argument(format!(
                "`{field}` is empty; give a device name, a user (alice@example.com), or tag:NAME, group:NAME, ip:ADDRESS"
            )));
        }
        if let Some(record) = state.devices().iter().find(|d| d.name == text) {
            return Ok(Resolved::Device {
                device: Box::new(policy_device(record, state.users())),
                standing: standing(record, state.users(), state.built_at()),
            });
        }
        let user = text.strip_prefix("user:").unwrap_or(text);
        if let Some(record) = state.users().get(user) {
            return Ok(Resolved::User {
                name: record.name.clone(),
                groups: record.groups.clone(),
            });
        }
        if text.contains(':') || text.contains('@') {
            return Endpoint::parse(text)
                .map(Resolved::Endpoint)
                .map_err(|e| Status::invalid_argument(format!("`{field}`: {e}")));
        }
        Err(Status::not_found(format!(
            "`{field}`: no device or user named `{text}`; `ztmesh admin devices list` and `users list` show the names, or use tag:NAME, group:NAME, ip:ADDRESS"
        )))
    }

    fn party(&self) -> Party<'_> {
        match self {
            Resolved::Device { device, .. } => Party::Device(device),
            Resolved::User { name, groups } => Party::User { name, groups },
            Resolved::Endpoint(endpoint) => Party::Endpoint(endpoint),
        }
    }

    fn is_blocked(&self) -> bool {
        matches!(self, Resolved::Device { standing, .. } if *standing != Standing::Active)
    }

    /// Why this side may not be where one expects: standing, failing
    /// posture checks, assumptions.
    fn notes(&self, policy: &Policy) -> Vec<String> {
        match self {
            Resolved::Device { device, standing } => {
                let mut notes: Vec<String> = policy
                    .posture_checks(device)
                    .into_iter()
                    .filter(|check| !check.passed)
                    .map(|check| {
                        format!(
                            "device `{}` is left out of segment `{}`: posture `{}` fails ({}: {})",
                            device.name, check.segment, check.posture, check.check, check.detail
                        )
                    })
                    .collect();
                if *standing != Standing::Active {
                    notes.insert(
                        0,
                        format!("device `{}` is {}", device.name, standing.as_str()),
                    );
                }
                notes
            }
            Resolved::User { name, .. } => vec![format!(
                "`{name}` is a user: decided for a device of theirs that passes every posture"
            )],
            Resolved::Endpoint(endpoint) => vec![format!(
                "`{endpoint}` is a hypothetical device with only that attribute, passing every posture"
            )],
        }
    }
}
