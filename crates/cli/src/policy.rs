//! `ztmesh admin policy …`: set, get, validate, check (what-if), history,
//! rollback, and import from other systems' ACL files.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use ztmesh_proto::v1;

use crate::admin::{Client, Output, status_error};

#[derive(Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate FILE (including its tests) and make it the policy in force.
    Set {
        /// Policy file (TOML).
        file: PathBuf,
        /// Why: kept with the version and shown by `policy history`.
        #[arg(long, short = 'm', default_value = "")]
        message: String,
    },
    /// Print the policy in force, or an earlier version.
    Get {
        /// Version to print (default: the one in force).
        #[arg(long)]
        version: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check FILE (including its tests) without applying it.
    Validate {
        /// Policy file (TOML).
        file: PathBuf,
    },
    /// What-if: would a flow be allowed, and which rule decides?
    Check {
        /// Source: a device name, a user, or tag:NAME, group:NAME, ip:ADDRESS.
        #[arg(long)]
        from: String,
        /// Destination, same forms.
        #[arg(long)]
        to: String,
        /// Flow, e.g. tcp/443, udp/53, icmp.
        #[arg(long)]
        port: String,
        /// Decide at this instant (RFC 3339, e.g. 2026-12-01T09:00:00Z) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// Check against this candidate policy file instead of the one in force.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// List policy versions, newest first.
    History {
        /// How many versions.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Make version N's text the newest version (pushed to every daemon).
    Rollback {
        /// The version to go back to.
        version: u64,
        /// Why.
        #[arg(long, short = 'm', default_value = "")]
        message: String,
    },
    /// Convert another system's ACL file into a ztmesh policy (local; sends nothing).
    Import {
        /// Format of FILE: `tailscale` (or `headscale`).
        kind: String,
        /// The ACL file (HuJSON).
        file: PathBuf,
        /// Write the policy here instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

impl PolicyCommand {
    /// Whether the command runs without the server.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self, PolicyCommand::Import { .. })
    }

    /// Reads the local files the command needs, before connecting.
    pub(crate) fn local_text(&self) -> Result<Option<String>> {
        match self {
            PolicyCommand::Set { file, .. }
            | PolicyCommand::Validate { file }
            | PolicyCommand::Check {
                file: Some(file), ..
            } => read_policy(file).map(Some),
            _ => Ok(None),
        }
    }
}

/// Runs a command that needs no server.
pub(crate) fn run_local(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Import { kind, file, output } => {
            crate::import::import_command(&kind, &file, output.as_deref())
        }
        _ => Err(anyhow!("this policy command needs the server")),
    }
}

/// Runs a policy command against the server; `text` is the file read by
/// [`PolicyCommand::local_text`].
pub(crate) async fn run(
    client: &Client,
    command: PolicyCommand,
    text: Option<String>,
) -> Result<()> {
    let text = text.unwrap_or_default();
    match command {
        PolicyCommand::Set { file, message } => {
            let response = client
                .admin()
                .set_policy(client.request(v1::SetPolicyRequest {
                    text,
                    comment: message,
                }))
                .await
                .map_err(|s| policy_error(&file, s))?
                .into_inner();
            print_warnings(&file, &response.warnings);
            println!("policy version {} is in force", response.version);
        }
        PolicyCommand::Validate { file } => {
            let response = client
                .admin()
                .validate_policy(client.request(v1::ValidatePolicyRequest { text }))
                .await
                .map_err(|s| policy_error(&file, s))?
                .into_inner();
            print_warnings(&file, &response.warnings);
            println!(
                "{}: valid ({} segments, {} rules, tests pass)",
                file.display(),
                response.segments,
                response.rules
            );
        }
        PolicyCommand::Get { version, output } => get(client, version, output).await?,
        PolicyCommand::Check {
            from,
            to,
            port,
            at,
            file,
            output,
        } => {
            let at = at.as_deref().map(parse_instant).transpose()?.unwrap_or(0);
            let response = client
                .admin()
                .check_policy(client.request(v1::CheckPolicyRequest {
                    from,
                    to,
                    port,
                    at,
                    policy_text: text,
                }))
                .await
                .map_err(|s| match &file {
                    Some(file) => policy_error(file, s),
                    None => status_error(s),
                })?
                .into_inner();
            print_check(&response, output)?;
        }
        PolicyCommand::History { limit, output } => {
            let versions = client
                .admin()
                .list_policy_versions(client.request(v1::ListPolicyVersionsRequest { limit }))
                .await
                .map_err(status_error)?
                .into_inner()
                .versions;
            print_history(&versions, output)?;
        }
        PolicyCommand::Import { .. } => run_local(command)?,
        PolicyCommand::Rollback { version, message } => {
            let response = client
                .admin()
                .rollback_policy(client.request(v1::RollbackPolicyRequest {
                    version,
                    comment: message,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            print_warnings(Path::new("policy"), &response.warnings);
            println!(
                "policy version {} (the text of version {version}) is in force",
                response.version
            );
        }
    }
    Ok(())
}

async fn get(client: &Client, version: Option<u64>, output: Output) -> Result<()> {
    let policy = client
        .admin()
        .get_policy(client.request(v1::GetPolicyRequest {
            version: version.unwrap_or(0),
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    if output == Output::Json {
        let json = serde_json::json!({
            "version": policy.version,
            "author": policy.author,
            "created_at": policy.created_at,
            "text": policy.text,
        });
        println!("{json}");
    } else if policy.version == 0 {
        eprintln!("no policy has been set: nothing is allowed (default deny)");
    } else {
        eprintln!(
            "# policy version {} set by {}",
            policy.version, policy.author
        );
        print!("{}", policy.text);
    }
    Ok(())
}

fn print_check(response: &v1::CheckPolicyResponse, output: Output) -> Result<()> {
    if output == Output::Json {
        let json = serde_json::json!({
            "action": response.action,
            "rule": response.rule,
            "monitor": response.monitor,
            "from_segments": response.from_segments,
            "to_segments": response.to_segments,
            "explanation": response.explanation,
            "policy_version": response.policy_version,
            "notes": response.notes,
        });
        println!("{json}");
        return Ok(());
    }
    println!(
        "{}: {}",
        response.action.to_uppercase(),
        response.explanation
    );
    let list = |segments: &[String]| {
        if segments.is_empty() {
            "none".to_owned()
        } else {
            segments.join(", ")
        }
    };
    println!("  from segments: {}", list(&response.from_segments));
    println!("  to segments:   {}", list(&response.to_segments));
    match response.policy_version {
        0 => println!("  policy: the candidate file"),
        version => println!("  policy: version {version}"),
    }
    for note in &response.notes {
        println!("  note: {note}");
    }
    Ok(())
}

fn print_history(versions: &[v1::PolicyVersion], output: Output) -> Result<()> {
    if output == Output::Json {
        let list: Vec<_> = versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "version": v.version,
                    "author": v.author,
                    "created_at": v.created_at,
                    "comment": v.comment,
                    "rules": v.rules,
                    "current": v.current,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if versions.is_empty() {
        println!("no policy has been set: nothing is allowed (default deny)");
        return Ok(());
    }
    println!(
        "{:>8}  {:<20}  {:<24}  {:>5}  comment",
        "version", "set at (UTC)", "by", "rules"
    );
    for v in versions {
        let at = u64::try_from(v.created_at)
            .ok()
            .map(|s| {
                humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(s))
                    .to_string()
            })
            .unwrap_or_default();
        println!(
            "{:>7}{} {:<20}  {:<24}  {:>5}  {}",
            v.version,
            if v.current { "*" } else { " " },
            at,
            v.author,
            v.rules,
            v.comment
        );
    }
    Ok(())
}

fn print_warnings(file: &Path, warnings: &[String]) {
    for warning in warnings {
        eprintln!("{}: {warning}", file.display());
    }
}

/// RFC 3339 to Unix seconds.
fn parse_instant(text: &str) -> Result<i64> {
    let time = humantime::parse_rfc3339_weak(text).with_context(|| {
        format!("`{text}` is not a time; write it like 2026-12-01T09:00:00Z (UTC)")
    })?;
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("`{text}` is before 1970"))?
        .as_secs();
    i64::try_from(seconds).map_err(|_| anyhow!("`{text}` is too far in the future"))
}

fn read_policy(file: &Path) -> Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("reading the policy file {}", file.display()))
}

fn policy_error(file: &Path, status: tonic::Status) -> anyhow::Error {
    if status.code() == tonic::Code::InvalidArgument {
        anyhow!(
            "{}: {}; the policy in force is unchanged",
            file.display(),
            status.message()
        )
    } else {
        status_error(status)
    }
}
