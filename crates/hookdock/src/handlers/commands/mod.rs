//! Slash commands in issue and pull request comments (`/label`, `/unlabel`, `/assign`,
//! `/unassign`, `/review`, `/size`, `/help`). Mutating commands need write, maintain or admin
//! permission on the repository; every command comment gets one reply saying what was done or
//! why not, and a comment already answered is not run again (a replay changes nothing).
//! Comments by bots are ignored.

pub mod parse;

use std::sync::Arc;

use serde_json::{Value, json};

use self::parse::{Command, help_text, parse};
use super::HandlerError;
use super::automation::{Automation, AutomationFuture, Outcome, Run, marker};
use super::labeling::apply_size_label;
use super::repo_config::RepoConfig;

/// Permissions that may run mutating commands (`maintain` is reported as `write` by the
/// collaborator permission API, but accept it if it comes).
const WRITERS: &[&str] = &["admin", "maintain", "write"];

pub struct Commands;

impl Automation for Commands {
    fn name(&self) -> &'static str {
        "commands"
    }

    fn subscribes(&self, event: &str, action: Option<&str>) -> bool {
        event == "issue_comment" && action == Some("created")
    }

    fn enabled(&self, config: &RepoConfig) -> bool {
        config.commands.enabled
    }

    fn run<'a>(&'a self, run: &'a Run<'a>, config: &'a RepoConfig) -> AutomationFuture<'a> {
        Box::pin(async move {
            let event = run.event;
            let (Some(number), Some(comment)) = (event.number, event.payload.get("comment")) else {
                return Ok(Outcome::default());
            };
            let body = comment
                .get("body")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // hookdock's own replies carry a marker; never read them as commands.
            if body.contains("<!-- hookdock:") {
                return Ok(Outcome::default());
            }
            let commands = parse(body);
            if commands.is_empty() {
                return Ok(Outcome::default());
            }
            let author = event.sender.clone().unwrap_or_default();
            if event.sender_is_bot {
                run.record(
                    Some(number),
                    "skipped",
                    json!({ "reason": format!("commands written by bots are ignored ({author})") }),
                );
                return Ok(Outcome::default());
            }
            let comment_id = comment
                .get("id")
                .and_then(Value::as_u64)
                .unwrap_or_default();
            let reply_marker = marker(&format!("command-reply:{comment_id}"));
            // A comment is answered once: a replay finds the reply and leaves what was done,
            // and what the reply says about it, as they are.
            if let Some(reply) = run.owned_comment(number, &reply_marker).await? {
                run.record(
                    Some(number),
                    "skipped",
                    json!({ "reason": format!("comment {comment_id} was answered already (comment {})", reply.id) }),
                );
                return Ok(Outcome::default());
            }
            let mut lines = Vec::new();
            for command in &commands {
                lines.push(execute(run, config, number, &author, command).await?);
            }
            let reply = format!(
                "@{author}\n\n{}",
                lines
                    .iter()
                    .map(|l| format!("- {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            run.upsert_comment(number, &reply_marker, &reply).await?;
            Ok(Outcome::default())
        })
    }
}

/// Runs one command; returns the line of the reply about it.
async fn execute(
    run: &Run<'_>,
    config: &RepoConfig,
    number: u64,
    author: &str,
    command: &Command,
) -> Result<String, HandlerError> {
    let name = command.name().to_owned();
    if command.is_mutating() {
        let permission = run
            .services
            .permission(run.owner(), run.repo(), author)
            .await?;
        if !WRITERS.contains(&permission.as_str()) {
            return Ok(format!(
                "`/{name}` needs write, maintain or admin permission on {}/{}; you have `{permission}`.",
                run.owner(),
                run.repo()
            ));
        }
    }
    let on_pull = run.event.comment_on_pull();
    Ok(match command {
        Command::Label(labels) => {
            let added = run.add_labels(number, labels, None).await?;
            done(&name, "added", &added, labels)
        }
        Command::Unlabel(labels) => {
            let removed = run.remove_labels(number, labels).await?;
            done(&name, "removed", &removed, labels)
        }
        Command::Assign(logins) => {
            let changed = run.set_assignees(number, logins, true).await?;
            done(&name, "assigned", &changed, logins)
        }
        Command::Unassign(logins) => {
            let changed = run.set_assignees(number, logins, false).await?;
            done(&name, "unassigned", &changed, logins)
        }
        Command::Review if on_pull => {
            "`/review`: a review of the newest commit is queued (a commit already reviewed is not reviewed again).".to_owned()
        }
        Command::Size if on_pull => {
            let pull: Value = run
                .gh
                .pull_request(run.owner(), run.repo(), number)
                .await?;
            let head = pull
                .pointer("/head/sha")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let (label, lines) = apply_size_label(run, config, number, head).await?;
            format!("`/size`: {lines} changed lines counted, labelled `{label}`.")
        }
        Command::Review | Command::Size => {
            format!("`/{name}` works on pull requests only.")
        }
        Command::Help => help_text(),
        Command::Unknown { name } => {
            format!("`/{name}` is not a command hookdock knows.\n\n{}", help_text())
        }
        Command::Invalid { name, reason } => format!("`/{name}`: {reason}."),
    })
}

fn done(name: &str, verb: &str, changed: &[String], asked: &[String]) -> String {
    if changed.is_empty() {
        format!(
            "`/{name}`: nothing to change ({}).",
            asked
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!(
            "`/{name}`: {verb} {}.",
            changed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

pub fn automations() -> Vec<Arc<dyn Automation>> {
    vec![Arc::new(Commands)]
}
