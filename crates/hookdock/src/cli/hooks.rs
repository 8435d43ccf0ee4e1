//! `hookdock repos|orgs|redeliver|rotate-key`: hookdock's webhooks on GitHub, from the command
//! line. These act on the database directly; a running server picks up new secrets within
//! `hooks.reload_secs`, and anything it refused meanwhile is recovered by the redelivery sweep.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use hookdock::clock::SystemClock;
use hookdock::config::{Settings, parse_span};
use hookdock::github::HookScope;
use hookdock::hooks::{HookManager, HookStatus, parse_repository, rotate_key};
use hookdock::ingest::WebhookSecrets;
use hookdock::store::{Store, rfc3339};
use secrecy::SecretString;

use super::{Failure, print_json};

#[derive(Debug, Subcommand)]
pub enum ReposCommand {
    /// List tracked repositories and organizations with their webhook status.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create (or adopt, or repair) hookdock's webhook on owner/repo.
    Install { repo: String },
    /// Delete hookdock's webhook from owner/repo and stop tracking it.
    Uninstall { repo: String },
    /// Give the webhook a new secret; the old one stays valid for hooks.rotation_grace_secs.
    RotateSecret { repo: String },
    /// Ask GitHub to send the webhook a ping.
    Ping { repo: String },
    /// Check every tracked webhook on GitHub now (deleted, disabled, pointing elsewhere).
    Check,
}

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Create (or adopt, or repair) hookdock's webhook on an organization.
    Install { org: String },
    /// Delete hookdock's webhook from an organization and stop tracking it.
    Uninstall { org: String },
    /// Give the organization webhook a new secret.
    RotateSecret { org: String },
    /// Ask GitHub to send the organization webhook a ping.
    Ping { org: String },
}

/// The token: `github_token` (HOOKDOCK_GITHUB_TOKEN, then GITHUB_TOKEN), else what the GitHub
/// CLI is signed in with (`gh auth token`), for a single operator on their own machine.
pub fn with_cli_token(mut settings: Settings) -> Settings {
    if settings.github_token.is_none()
        && let Ok(out) = std::process::Command::new("gh")
            .args(["auth", "token"])
            .output()
        && out.status.success()
    {
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !token.is_empty() {
            settings.github_token = Some(SecretString::from(token));
        }
    }
    settings
}

fn manager(settings: &Settings, store: &Store) -> Result<HookManager, Failure> {
    let secrets = Arc::new(WebhookSecrets::from_settings(settings));
    HookManager::from_settings(settings, store.clone(), secrets, Arc::new(SystemClock))
        .map_err(|e| Failure::Other(e.into()))
}

fn print_table(items: &[HookStatus]) -> Result<(), Failure> {
    if items.is_empty() {
        out!("no repository or organization is tracked; run `hookdock repos install owner/repo`");
        return Ok(());
    }
    out!(
        "{:<13} {:<32} {:>12} {:<10} {:<28} LAST EVENT",
        "SCOPE",
        "NAME",
        "HOOK",
        "STATUS",
        "LAST DELIVERY"
    );
    for h in items {
        let delivery = h
            .last_delivery
            .as_ref()
            .map(|d| format!("{} {}", d.code, rfc3339(d.at)))
            .unwrap_or_else(|| "-".into());
        let event = h
            .last_event
            .as_ref()
            .map(|e| format!("{} {}", e.event, rfc3339(e.received_at)))
            .unwrap_or_else(|| "-".into());
        out!(
            "{:<13} {:<32} {:>12} {:<10} {:<28} {event}",
            h.scope,
            h.name,
            h.hook_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "-".into()),
            h.status,
            delivery
        );
        if let Some(error) = &h.last_error {
            out!("{:>14}{error}", "");
        }
    }
    Ok(())
}

pub async fn repos(
    command: &ReposCommand,
    settings: Settings,
    store: &Store,
) -> Result<ExitCode, Failure> {
    let settings = with_cli_token(settings);
    let hooks = manager(&settings, store)?;
    let scope = |text: &str| parse_repository(text).map_err(|e| Failure::Other(e.into()));
    match command {
        ReposCommand::List { json } => {
            let items = hooks.list().await.map_err(anyhow::Error::from)?;
            if *json {
                print_json(&items)?;
            } else {
                print_table(&items)?;
            }
        }
        ReposCommand::Install { repo } => act(&hooks, Act::Install, &scope(repo)?).await?,
        ReposCommand::Uninstall { repo } => act(&hooks, Act::Uninstall, &scope(repo)?).await?,
        ReposCommand::RotateSecret { repo } => act(&hooks, Act::Rotate, &scope(repo)?).await?,
        ReposCommand::Ping { repo } => act(&hooks, Act::Ping, &scope(repo)?).await?,
        ReposCommand::Check => {
            let items = hooks.check_all().await.map_err(anyhow::Error::from)?;
            print_table(&items)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn orgs(
    command: &OrgsCommand,
    settings: Settings,
    store: &Store,
) -> Result<ExitCode, Failure> {
    let settings = with_cli_token(settings);
    let hooks = manager(&settings, store)?;
    let (what, org) = match command {
        OrgsCommand::Install { org } => (Act::Install, org),
        OrgsCommand::Uninstall { org } => (Act::Uninstall, org),
        OrgsCommand::RotateSecret { org } => (Act::Rotate, org),
        OrgsCommand::Ping { org } => (Act::Ping, org),
    };
    act(&hooks, what, &HookScope::organization(org)).await?;
    Ok(ExitCode::SUCCESS)
}

enum Act {
    Install,
    Uninstall,
    Rotate,
    Ping,
}

async fn act(hooks: &HookManager, what: Act, scope: &HookScope) -> Result<(), Failure> {
    let name = scope.name();
    match what {
        Act::Install => {
            let done = hooks.install(scope).await.map_err(anyhow::Error::from)?;
            out!(
                "{name}: webhook {} {} ({}), events: {}",
                done.hook.hook_id.unwrap_or_default(),
                match done.action {
                    hookdock::hooks::InstallAction::Created => "created",
                    hookdock::hooks::InstallAction::Adopted =>
                        "adopted (it existed at hookdock's URL)",
                    hookdock::hooks::InstallAction::Repaired => "repaired",
                },
                done.hook.status,
                done.hook.events.join(", ")
            );
        }
        Act::Uninstall => {
            let done = hooks.uninstall(scope).await.map_err(anyhow::Error::from)?;
            for warning in &done.warnings {
                eprintln!("warning: {warning}");
            }
            out!("{name}: webhook removed; no longer tracked");
        }
        Act::Rotate => {
            let done = hooks
                .rotate_secret(scope)
                .await
                .map_err(anyhow::Error::from)?;
            out!(
                "{name}: webhook {} has a new secret; the previous one verifies until {}",
                done.hook_id,
                rfc3339(done.previous_valid_until)
            );
        }
        Act::Ping => {
            let status = hooks.ping(scope).await.map_err(anyhow::Error::from)?;
            out!(
                "{name}: GitHub is sending a ping to webhook {}",
                status.hook_id.unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub async fn redeliver(
    since: &str,
    json: bool,
    settings: Settings,
    store: &Store,
) -> Result<ExitCode, Failure> {
    let span = parse_span(since).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let settings = with_cli_token(settings);
    let hooks = manager(&settings, store)?;
    let report = hooks.sweep(Some(span)).await.map_err(anyhow::Error::from)?;
    if json {
        print_json(&report)?;
    } else {
        out!(
            "swept {} webhook(s), {} delivery attempt(s); {} failed but already stored; {} redelivery request(s)",
            report.hooks_swept,
            report.deliveries_seen,
            report.failed_but_stored,
            report.redelivered.len()
        );
        for r in &report.redelivered {
            out!("  {} {} ({})", r.name, r.guid, r.event);
        }
        for e in &report.errors {
            eprintln!("error: {e}");
        }
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub async fn rotate_key_command(settings: &Settings, store: &Store) -> Result<ExitCode, Failure> {
    let done = rotate_key(settings, store)
        .await
        .map_err(anyhow::Error::from)?;
    out!(
        "{} sealed secret(s) resealed under key {}",
        done.resealed,
        done.key_id
    );
    match &done.key_file {
        Some(path) => out!("{path} now holds the new key; back it up with the database"),
        None => out!(
            "every sealed secret now opens with secret_key alone: remove the old key from secret_old_keys on every instance"
        ),
    }
    Ok(ExitCode::SUCCESS)
}
