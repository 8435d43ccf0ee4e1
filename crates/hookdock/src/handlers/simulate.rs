//! Config simulation: when a pull request changes `.github/hookdock.yml`, replay the
//! repository's stored events of the last days in dry run under the current and the proposed
//! settings, and comment what would be different (or the proposed file's validation error).

use std::sync::Arc;

use serde_json::Value;

use super::HandlerError;
use super::automation::{
    Automation, AutomationFuture, Automations, DryRun, Outcome, Run, dry_run_event, marker,
    short_sha,
};
use super::labeling::pull_files;
use super::repo_config::{CONFIG_PATH, RepoConfig};
use crate::store::now_ms;

/// Events replayed at most, so a busy repository's simulation stays bounded.
const MAX_EVENTS: i64 = 200;
/// Differences listed in the comment at most.
const MAX_LISTED: usize = 25;

pub struct Simulate {
    others: Vec<Arc<dyn Automation>>,
}

impl Simulate {
    pub fn new(others: Vec<Arc<dyn Automation>>) -> Simulate {
        Simulate { others }
    }
}

impl Automation for Simulate {
    fn name(&self) -> &'static str {
        "config_simulation"
    }

    fn subscribes(&self, event: &str, action: Option<&str>) -> bool {
        event == "pull_request" && matches!(action, Some("opened" | "reopened" | "synchronize"))
    }

    fn enabled(&self, config: &RepoConfig) -> bool {
        config.simulate.enabled
    }

    fn run<'a>(&'a self, run: &'a Run<'a>, config: &'a RepoConfig) -> AutomationFuture<'a> {
        Box::pin(async move {
            let Some(number) = run.event.number else {
                return Ok(Outcome::default());
            };
            let files = pull_files(run, number).await?;
            if !files.iter().any(|f| f.path == CONFIG_PATH) {
                return Ok(Outcome::default());
            }
            let head = run
                .event
                .pull()
                .and_then(|p| p.pointer("/head/sha"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let proposed = match run
                .gh
                .file_contents(run.owner(), run.repo(), CONFIG_PATH, &head)
                .await?
            {
                Some(bytes) => run.services.parse_config(&bytes),
                // Deleted: the server's defaults apply.
                None => Ok(Arc::new(run.services.defaults().config().clone())),
            };
            let body = match proposed {
                Err(error) => format!(
                    "### hookdock config check\n\nThe proposed `{CONFIG_PATH}` at `{}` is not valid, so hookdock would ignore the repository until it is fixed:\n\n```\n{error}\n```",
                    short_sha(&head)
                ),
                Ok(proposed) => {
                    let report = simulate(
                        run.services,
                        &self.others,
                        &run.event.full_name(),
                        run.event.event_id,
                        config,
                        &proposed,
                    )
                    .await?;
                    report.comment(&head)
                }
            };
            run.upsert_comment(number, &marker("config-simulation"), &body)
                .await?;
            Ok(Outcome::default())
        })
    }
}

/// One event whose outcome differs between the two settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub event_id: i64,
    pub event: String,
    pub now: Vec<String>,
    pub proposed: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimulationReport {
    pub replayed: usize,
    pub days: u32,
    pub differences: Vec<Difference>,
}

impl SimulationReport {
    fn comment(&self, head: &str) -> String {
        let mut out = format!(
            "### hookdock config simulation\n\nReplayed {} stored event(s) of the last {} days in dry run under the current settings and under `{CONFIG_PATH}` at `{}`.\n\n",
            self.replayed,
            self.days,
            short_sha(head)
        );
        if self.differences.is_empty() {
            out.push_str("Nothing would be different.");
            return out;
        }
        out.push_str(&format!(
            "{} event(s) would be handled differently:\n\n| event | now | proposed |\n|---|---|---|\n",
            self.differences.len()
        ));
        for d in self.differences.iter().take(MAX_LISTED) {
            out.push_str(&format!(
                "| {} (#{}) | {} | {} |\n",
                d.event,
                d.event_id,
                cell(&d.now),
                cell(&d.proposed)
            ));
        }
        if self.differences.len() > MAX_LISTED {
            out.push_str(&format!(
                "\nand {} more.",
                self.differences.len() - MAX_LISTED
            ));
        }
        out
    }
}

fn cell(items: &[String]) -> String {
    if items.is_empty() {
        "nothing".to_owned()
    } else {
        items.join("<br>").replace('|', "\\|")
    }
}

/// Replays `repository`'s events of the last `proposed.simulate.days` (except `except`)
/// under both settings and lists the events whose outcome differs.
pub async fn simulate(
    services: &Automations,
    automations: &[Arc<dyn Automation>],
    repository: &str,
    except: i64,
    current: &RepoConfig,
    proposed: &RepoConfig,
) -> Result<SimulationReport, HandlerError> {
    let days = proposed.simulate.days;
    let since = now_ms() - i64::from(days) * 86_400_000;
    let events = services
        .store()
        .repository_events_since(repository, since, MAX_EVENTS)
        .await?;
    let mut report = SimulationReport {
        days,
        ..SimulationReport::default()
    };
    for event in events.iter().filter(|e| e.event_id != except) {
        let now = dry_run_event(services, automations, event.event_id, Some(current)).await?;
        let then = dry_run_event(services, automations, event.event_id, Some(proposed)).await?;
        report.replayed += 1;
        let (now, then) = (outcomes(&now), outcomes(&then));
        if now != then {
            report.differences.push(Difference {
                event_id: event.event_id,
                event: match &event.action {
                    Some(a) => format!("{}.{a}", event.event),
                    None => event.event.clone(),
                },
                now,
                proposed: then,
            });
        }
    }
    Ok(report)
}

/// A readable line per action (or error) of a dry run.
fn outcomes(runs: &[DryRun]) -> Vec<String> {
    let mut out = Vec::new();
    for run in runs {
        match &run.result {
            Err(e) => out.push(format!("{}: fails ({e})", run.automation)),
            Ok(record) => {
                for a in &record.actions {
                    out.push(format!(
                        "{}: {}",
                        run.automation,
                        describe(&a.kind, &a.detail)
                    ));
                }
            }
        }
    }
    out
}

fn describe(kind: &str, detail: &Value) -> String {
    let list = |key: &str| {
        detail
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    match kind {
        "add_labels" => format!("add {}", list("labels")),
        "remove_label" => format!(
            "remove `{}`",
            detail
                .get("label")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ),
        "assign" | "unassign" => format!("{kind} {}", list("logins")),
        "create_review" => {
            let comments = detail
                .get("comments")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            format!("review with {comments} inline comment(s)")
        }
        "skipped" | "superseded" => format!(
            "{kind}: {}",
            detail.get("reason").and_then(Value::as_str).unwrap_or("")
        ),
        "create_comment" | "update_comment" => "comment".to_owned(),
        other => other.to_owned(),
    }
}
