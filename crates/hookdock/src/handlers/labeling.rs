//! The label automations: a size label on every pull request open and push (generated,
//! vendored and skipped files not counted; the previous size label replaced), and keyword
//! labels on new and edited issues.

use std::sync::Arc;

use serde_json::{Value, json};

use super::HandlerError;
use super::automation::{Automation, AutomationFuture, Outcome, Run, is_bot};
use super::labels::{counted_lines, issue_labels, size_label};
use super::repo_config::RepoConfig;
use super::review::ChangedFile;
use super::review::diff::{Classifier, GitAttributes};

/// The changed files of a pull request, from the files API.
pub async fn pull_files(run: &Run<'_>, number: u64) -> Result<Vec<ChangedFile>, HandlerError> {
    let raw = run
        .gh
        .pull_request_files(run.owner(), run.repo(), number)
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

/// The classifier for a repository at `git_ref`: the configured globs and the repository's
/// `.gitattributes`.
pub async fn classifier(
    run: &Run<'_>,
    config: &RepoConfig,
    git_ref: &str,
) -> Result<Classifier, HandlerError> {
    let attributes = run
        .gh
        .file_contents(run.owner(), run.repo(), ".gitattributes", git_ref)
        .await?
        .map(|bytes| GitAttributes::parse(&String::from_utf8_lossy(&bytes)))
        .unwrap_or_else(|| GitAttributes::parse(""));
    Classifier::new(&config.review.skip, &config.review.generated, attributes)
        .map_err(|e| HandlerError::Permanent(format!("invalid repository config: {e}")))
}

/// Puts the right size label on pull request `number` at `head_sha` and takes the other
/// size labels off; returns the label and the lines counted.
pub async fn apply_size_label(
    run: &Run<'_>,
    config: &RepoConfig,
    number: u64,
    head_sha: &str,
) -> Result<(String, u64), HandlerError> {
    let size = &config.labels.size;
    let files = pull_files(run, number).await?;
    let classifier = classifier(run, config, head_sha).await?;
    let lines = counted_lines(&files, &classifier);
    let label = size_label(lines, &size.tiers, &size.largest).to_owned();
    let others: Vec<String> = size
        .tiers
        .iter()
        .map(|t| t.name.clone())
        .chain(std::iter::once(size.largest.clone()))
        .filter(|name| !name.eq_ignore_ascii_case(&label))
        .collect();
    run.remove_labels(number, &others).await?;
    run.add_labels(number, std::slice::from_ref(&label), Some(&size.color))
        .await?;
    Ok((label, lines))
}

/// `size/XS` … `size/XL` on pull requests.
pub struct SizeLabels;

impl Automation for SizeLabels {
    fn name(&self) -> &'static str {
        "size_label"
    }

    fn subscribes(&self, event: &str, action: Option<&str>) -> bool {
        event == "pull_request" && matches!(action, Some("opened" | "reopened" | "synchronize"))
    }

    fn enabled(&self, config: &RepoConfig) -> bool {
        config.labels.size.enabled
    }

    fn run<'a>(&'a self, run: &'a Run<'a>, config: &'a RepoConfig) -> AutomationFuture<'a> {
        Box::pin(async move {
            let Some(pull) = run.event.pull() else {
                return Ok(Outcome::default());
            };
            let Some(number) = run.event.number else {
                return Ok(Outcome::default());
            };
            if is_bot(pull.get("user")) && !config.bots {
                run.record(
                    Some(number),
                    "skipped",
                    json!({ "reason": "opened by a bot (set `bots: true` to label these)" }),
                );
                return Ok(Outcome::default());
            }
            let head = pull
                .pointer("/head/sha")
                .and_then(Value::as_str)
                .unwrap_or_default();
            apply_size_label(run, config, number, head).await?;
            Ok(Outcome::default())
        })
    }
}

/// Keyword labels on issues.
pub struct IssueLabels;

impl Automation for IssueLabels {
    fn name(&self) -> &'static str {
        "issue_labels"
    }

    fn subscribes(&self, event: &str, action: Option<&str>) -> bool {
        event == "issues" && matches!(action, Some("opened" | "edited"))
    }

    fn enabled(&self, config: &RepoConfig) -> bool {
        config.labels.issues.enabled
    }

    fn run<'a>(&'a self, run: &'a Run<'a>, config: &'a RepoConfig) -> AutomationFuture<'a> {
        Box::pin(async move {
            let (Some(issue), Some(number)) = (run.event.payload.get("issue"), run.event.number)
            else {
                return Ok(Outcome::default());
            };
            let text = |key: &str| issue.get(key).and_then(Value::as_str).unwrap_or_default();
            let wanted = issue_labels(text("title"), text("body"), &config.labels.issues.rules);
            if !wanted.is_empty() {
                run.add_labels(number, &wanted, None).await?;
            }
            Ok(Outcome::default())
        })
    }
}

/// The label automations, for registration.
pub fn automations() -> Vec<Arc<dyn Automation>> {
    vec![Arc::new(SizeLabels), Arc::new(IssueLabels)]
}
