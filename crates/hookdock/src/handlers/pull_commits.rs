//! Built-in handler that reads a pull request's commits from GitHub's REST API
//! (`GET /repos/{owner}/{repo}/pulls/{pull_number}/commits`) after its `opened`,
//! `synchronize`, `reopened` and `closed` webhooks, so that its first commit, and with it
//! coding time, is known. Webhook payloads carry no commit times, hence the call.
//!
//! It is registered only when a GitHub token is configured (and
//! `handlers.metrics.fetch_commits` is on); without one, first commits come only from
//! backfills. It runs as its own queue job, beside the metrics job of the same event: a slow
//! or rate-limited GitHub delays only it, never ingest or the other metrics, and a failure is
//! retried with the queue's backoff (or GitHub's `retry-after`).
//!
//! The answer is returned as an API snapshot together with the effects the metrics parser
//! derives from it ([`effects_for`] on [`COMMITS_ANSWER`]), so `metrics rebuild` recomputes the
//! same row. Running it again (retry, replay) reads the commits again; the newest answer wins,
//! whatever order jobs and backfills finish in. This module also owns the call and the shape of
//! that snapshot, which backfills share.

use std::sync::Arc;

use serde_json::{Value, json};

use super::metrics::{COMMITS_ANSWER, effects_for};
use super::payload::{Payload, owner_and_name};
use super::{Handler, HandlerError, HandlerFuture, JobContext};
use crate::clock::{Clock, unix_ms};
use crate::config::MetricsSettings;
use crate::github::{GithubClient, GithubError};
use crate::store::{ApiSnapshot, Effect, rfc3339};

/// GitHub lists at most this many commits of a pull request (oldest first).
pub const MAX_COMMITS: usize = 250;

pub struct PullCommitsHandler {
    github: GithubClient,
    clock: Arc<dyn Clock>,
    settings: MetricsSettings,
}

impl PullCommitsHandler {
    pub const NAME: &'static str = "metrics_commits";

    /// `github` acts with the configured token; `clock` dates each answer.
    pub fn new(
        github: GithubClient,
        clock: Arc<dyn Clock>,
        settings: MetricsSettings,
    ) -> PullCommitsHandler {
        PullCommitsHandler {
            github,
            clock,
            settings,
        }
    }
}

impl Handler for PullCommitsHandler {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn subscribes(&self, event: &str, action: Option<&str>) -> bool {
        event == "pull_request"
            && matches!(
                action,
                Some("opened" | "synchronize" | "reopened" | "closed")
            )
    }

    fn handle<'a>(&'a self, ctx: &'a JobContext<'a>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let payload = ctx.payload().await?;
            let p = Payload {
                doc: &payload,
                label: format!(
                    "{}.{}",
                    ctx.job.event,
                    ctx.job.action.as_deref().unwrap_or("none")
                ),
            };
            let repo = p.repository()?;
            let number = p.i64("pull_request.number")?;
            let (owner, name) = owner_and_name(&repo).ok_or_else(|| {
                HandlerError::Permanent(format!(
                    "{} payload: `repository.full_name` {repo:?} is not owner/name",
                    p.label
                ))
            })?;
            // Taken before the call: an answer read later by anyone counts as newer.
            let fetched_at = unix_ms(self.clock.now());
            let commits = fetch_commits(&self.github, owner, name, number).await?;
            let snapshot = commits_snapshot(&repo, number, commits, fetched_at);
            let mut effects = effects_for(
                &snapshot.kind,
                snapshot.action.as_deref(),
                &snapshot.payload,
                &self.settings,
            )?;
            effects.push(Effect::KeepApiSnapshot(Box::new(snapshot)));
            Ok(effects)
        })
    }
}

/// The commits of pull request `number` (oldest first, at most [`MAX_COMMITS`]), every page.
pub async fn fetch_commits(
    github: &GithubClient,
    owner: &str,
    name: &str,
    number: i64,
) -> Result<Vec<Value>, GithubError> {
    github
        .get_all(
            &format!("/repos/{owner}/{name}/pulls/{number}/commits?per_page=100"),
            &format!("the commits of {owner}/{name}#{number}"),
            MAX_COMMITS,
        )
        .await
}

/// The answer of [`fetch_commits`], read at `fetched_at` (Unix ms), as the snapshot kept for
/// rebuilds: per commit only what the metrics may use (sha, author and committer dates, the
/// GitHub users), no names or e-mail addresses.
pub fn commits_snapshot(
    repo: &str,
    number: i64,
    commits: Vec<Value>,
    fetched_at: i64,
) -> ApiSnapshot {
    let user = |u: Option<&Value>| match u.filter(|u| !u.is_null()) {
        Some(u) => json!({"id": u.get("id"), "login": u.get("login"), "type": u.get("type")}),
        None => Value::Null,
    };
    let commits: Vec<Value> = commits
        .iter()
        .map(|c| {
            json!({
                "sha": c.get("sha"),
                "commit": {
                    "author": {"date": c.pointer("/commit/author/date")},
                    "committer": {"date": c.pointer("/commit/committer/date")},
                },
                "author": user(c.get("author")),
                "committer": user(c.get("committer")),
            })
        })
        .collect();
    ApiSnapshot {
        repo: repo.to_owned(),
        kind: COMMITS_ANSWER.to_owned(),
        action: None,
        key: number,
        payload: json!({
            "repository": {"full_name": repo},
            "pull_request": {"number": number},
            "fetched_at": rfc3339(fetched_at),
            "commits": commits,
        }),
        fetched_at,
    }
}
