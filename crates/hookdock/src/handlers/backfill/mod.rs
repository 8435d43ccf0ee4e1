//! `hookdock metrics backfill owner/repo --since 90d`: loads a repository's pull requests and
//! reviews through GitHub's REST API and stores them as the metrics handler would from
//! webhooks.
//!
//! The REST pull request object has the shape of a webhook's `pull_request`, and a REST review
//! that of a `pull_request_review` payload's `review` (states in uppercase, which the handler
//! lowercases), so each is wrapped into a payload and parsed by [`effects_for`]: the same
//! effects, merged by the same order-independent upserts, so a backfill is idempotent and agrees
//! with webhook data whatever arrives first.
//!
//! A run lists the pull requests (`updated_at` descending, stopping at the first older than
//! `since`), then fetches each one (for size and `merged`) and its reviews, and commits its
//! effects together with the run's cursor: the last pull request done in listing order. A run
//! that stops (error, rate limit beyond the client's patience, Ctrl-C) is resumed by running it
//! again: pull requests before the cursor that GitHub has not updated since the run began,
//! and whose stored row is that recent, are not fetched again.
//!
//! Besides the pull request, its reviews and comments, a run reads its commits (first commit,
//! shared with [`super::pull_commits`]) and its issue events (draft changes). [`runs`] makes a
//! run exclusive per repository across instances and keeps its status in the database.

use std::time::Duration;

use serde_json::{Value, json};

use super::metrics::{DRAFT_EVENTS_ANSWER, effects_for};
use super::payload::parse_time;
use super::pull_commits::{commits_snapshot, fetch_commits};
use crate::clock::{Clock, unix_ms as ms};
use crate::config::MetricsSettings;
use crate::github::{Call, GithubClient, GithubError};
use crate::store::{ApiSnapshot, Effect, Store, StoreError, rfc3339};

mod runs;

pub use runs::{BackfillRuns, BackfillStatus, BackfillTask, RunClaim, backfill_status, claim};

/// Pull requests GitHub updated less than this before a run began are fetched again when it
/// resumes, in case GitHub's clock and hookdock's disagree.
const CLOCK_MARGIN_MS: i64 = 10 * 60 * 1000;
/// Most reviews (and review comments, and conversation comments) read per pull request.
const MAX_REVIEWS: usize = 10_000;
/// Most issue events read per pull request.
const MAX_EVENTS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("{0:?} is not a repository: use owner/repo")]
    BadRepo(String),
    #[error(
        "a backfill of {} is already running (started by the {} at {}, {} of {} pull requests done); wait for it to end: its status is at GET /api/v1/metrics/backfill/{}",
        .0.repo, .0.started_by, .0.started_at, .0.done, .0.total, .0.repo
    )]
    AlreadyRunning(Box<BackfillStatus>),
    #[error("{0}; the progress is saved: run the same backfill again to resume")]
    Interrupted(String),
    #[error("{0}; the progress is saved: run the same backfill again to resume")]
    Github(#[from] GithubError),
    #[error("{0}; the progress is saved: run the same backfill again to resume")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Payload(String),
}

/// What a backfill reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackfillProgress {
    /// Listing: pull requests found so far.
    Listed { pulls: usize },
    /// Pull requests done out of those listed (including those a resumed run skips).
    Pulls { done: usize, total: usize },
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackfillReport {
    /// GitHub's `owner/name`.
    pub repo: String,
    /// Pull requests updated since the bound.
    pub listed: usize,
    /// Pull requests fetched and stored by this run.
    pub fetched: usize,
    /// Pull requests an earlier, interrupted run had done.
    pub resumed: usize,
    /// Submitted reviews stored.
    pub reviews: usize,
    /// Reviews left out: pending, or by a deleted account.
    pub reviews_skipped: usize,
    /// Review comments and conversation comments stored (they can be a pull request's first
    /// review).
    pub comments: usize,
    /// Commits read (a pull request's first commit is the earliest written).
    pub commits: usize,
    /// `convert_to_draft` and `ready_for_review` issue events read (draft intervals).
    pub draft_changes: usize,
}

/// A backfill's dependencies: the store, a GitHub client acting with a token (its clock
/// paces rate-limit waits), the clock that says when "now" is, and the metrics settings.
pub struct Backfill<'a> {
    pub store: &'a Store,
    pub github: &'a GithubClient,
    pub clock: &'a dyn Clock,
    pub settings: &'a MetricsSettings,
}

/// One listed pull request.
#[derive(Debug, Clone, Copy)]
struct Listed {
    number: i64,
    updated_at: i64,
}

impl Backfill<'_> {
    /// Loads the pull requests of `repo` (`owner/repo`) updated in the last `since`, with
    /// their reviews, continuing an interrupted run of the same repository.
    pub async fn run(
        &self,
        repo: &str,
        since: Duration,
        progress: &mut (dyn FnMut(BackfillProgress) + Send),
    ) -> Result<BackfillReport, BackfillError> {
        let (owner, name) = split_repo(repo)?;
        let now = ms(self.clock.now());
        let since_ms = now.saturating_sub(i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
        let full_name = self.github.repository(owner, name).await?.full_name;
        let mut report = BackfillReport {
            repo: full_name.clone(),
            ..BackfillReport::default()
        };

        // Resume an unfinished run; otherwise start a new one.
        let previous = self
            .store
            .backfill_progress(&full_name)
            .await?
            .filter(|p| p.completed_at.is_none());
        let (started_at, mut cursor) = match &previous {
            Some(p) => (p.started_at, p.cursor),
            None => {
                self.store.start_backfill(&full_name, now, since_ms).await?;
                (now, None)
            }
        };
        let stored = match cursor {
            Some(_) => self.store.pull_request_versions(&full_name).await?,
            None => Default::default(),
        };

        let listed = self.list(owner, name, since_ms, progress).await?;
        report.listed = listed.len();
        let total = listed.len();
        for (i, pull) in listed.iter().enumerate() {
            let done_before = cursor.is_some_and(|(at, number)| {
                pull.updated_at <= started_at - CLOCK_MARGIN_MS
                    && (pull.updated_at > at || (pull.updated_at == at && pull.number == number))
                    && stored
                        .get(&pull.number)
                        .is_some_and(|v| *v >= pull.updated_at)
            });
            if done_before {
                report.resumed += 1;
            } else {
                let effects = self
                    .pull_effects(owner, name, &full_name, pull.number, &mut report)
                    .await?;
                // The cursor only moves down the listing: pull requests updated after the run
                // began come first on resume and say nothing of those below it.
                let key = (pull.updated_at, pull.number);
                let moved = cursor.is_none_or(|c| key < c).then_some(key);
                self.store
                    .apply_backfilled_pull(&full_name, &effects, moved, ms(self.clock.now()))
                    .await?;
                if moved.is_some() {
                    cursor = moved;
                }
                report.fetched += 1;
            }
            progress(BackfillProgress::Pulls { done: i + 1, total });
        }
        self.store
            .finish_backfill(&full_name, ms(self.clock.now()))
            .await?;
        Ok(report)
    }

    /// The repository's pull requests updated at or after `since`, newest update first.
    async fn list(
        &self,
        owner: &str,
        name: &str,
        since: i64,
        progress: &mut (dyn FnMut(BackfillProgress) + Send),
    ) -> Result<Vec<Listed>, BackfillError> {
        let what = format!("the pull requests of {owner}/{name}");
        let mut next = Some(format!(
            "/repos/{owner}/{name}/pulls?state=all&sort=updated&direction=desc&per_page=100"
        ));
        let mut listed: Vec<Listed> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(url) = next.take() {
            let answer = self
                .github
                .send(Call::new(reqwest::Method::GET, &url, &what))
                .await?;
            let page: Vec<Value> = answer.json(&what)?;
            let mut older = false;
            for pull in &page {
                let number = pull.get("number").and_then(Value::as_i64);
                let updated_at = pull
                    .get("updated_at")
                    .and_then(Value::as_str)
                    .and_then(parse_time);
                let (Some(number), Some(updated_at)) = (number, updated_at) else {
                    return Err(BackfillError::Payload(format!(
                        "a pull request listed for {owner}/{name} has no number or updated_at"
                    )));
                };
                if updated_at < since {
                    older = true;
                    break;
                }
                // A pull request updated while the pages are read can appear twice.
                if seen.insert(number) {
                    listed.push(Listed { number, updated_at });
                }
            }
            progress(BackfillProgress::Listed {
                pulls: listed.len(),
            });
            if !older && !page.is_empty() {
                next = answer.next_page();
            }
        }
        Ok(listed)
    }

    /// The effects of one pull request, its submitted reviews, comments, commits and draft
    /// changes, as their webhooks (and the commits job) give, with the API answers they came
    /// from to keep.
    async fn pull_effects(
        &self,
        owner: &str,
        name: &str,
        full_name: &str,
        number: i64,
        report: &mut BackfillReport,
    ) -> Result<Vec<Effect>, BackfillError> {
        // Taken before the first call, so an answer a webhook's job reads meanwhile counts as
        // newer than these.
        let fetched_at = ms(self.clock.now());
        let pull: Value = self
            .github
            .get(
                &format!("/repos/{owner}/{name}/pulls/{number}"),
                &format!("pull request {full_name}#{number}"),
            )
            .await?;
        let reviews: Vec<Value> = self
            .github
            .get_all(
                &format!("/repos/{owner}/{name}/pulls/{number}/reviews?per_page=100"),
                &format!("the reviews of {full_name}#{number}"),
                MAX_REVIEWS,
            )
            .await?;
        let repository = json!({ "full_name": full_name });
        let snapshot = |kind: &str, action: Option<&str>, key: i64, payload: Value| {
            Effect::KeepApiSnapshot(Box::new(ApiSnapshot {
                repo: full_name.to_owned(),
                kind: kind.to_owned(),
                action: action.map(str::to_owned),
                key,
                payload,
                fetched_at,
            }))
        };
        let mut effects = Vec::new();
        // Parses an answer as the event it stands for and keeps it; the pull request is upserted
        // from its own answer only, not again from the copy inside each review and comment.
        let mut parse = |kind: &str, action: Option<&str>, key: i64, payload: Value| {
            let more = effects_for(kind, action, &payload, self.settings)
                .map_err(|e| BackfillError::Payload(format!("{full_name}#{number}: {e}")))?;
            let is_pull = kind == "pull_request";
            effects.extend(
                more.into_iter()
                    .filter(|e| is_pull || !matches!(e, Effect::UpsertPullRequest(_))),
            );
            effects.push(snapshot(kind, action, key, payload));
            Ok::<(), BackfillError>(())
        };
        parse(
            "pull_request",
            None,
            number,
            json!({ "pull_request": &pull, "repository": &repository }),
        )?;
        for review in reviews {
            let submitted = review.get("submitted_at").is_some_and(|v| !v.is_null());
            let has_user = review.get("user").is_some_and(|v| !v.is_null());
            let id = review.get("id").and_then(Value::as_i64);
            let Some(id) = id.filter(|_| submitted && has_user) else {
                report.reviews_skipped += 1;
                continue;
            };
            let payload = json!({
                "action": "submitted",
                "review": review,
                "pull_request": &pull,
                "repository": &repository,
            });
            parse("pull_request_review", Some("submitted"), id, payload)?;
            report.reviews += 1;
        }
        // Comments on lines of the diff and in the conversation, read as the webhooks that
        // announce them.
        let review_comments: Vec<Value> = self
            .github
            .get_all(
                &format!("/repos/{owner}/{name}/pulls/{number}/comments?per_page=100"),
                &format!("the review comments of {full_name}#{number}"),
                MAX_REVIEWS,
            )
            .await?;
        let issue_comments: Vec<Value> = self
            .github
            .get_all(
                &format!("/repos/{owner}/{name}/issues/{number}/comments?per_page=100"),
                &format!("the comments of {full_name}#{number}"),
                MAX_REVIEWS,
            )
            .await?;
        let issue = json!({
            "number": number,
            "user": pull.get("user"),
            "pull_request": { "url": pull.get("url") },
        });
        let comments = review_comments
            .into_iter()
            .map(|c| ("pull_request_review_comment", json!({
                "action": "created", "comment": c, "pull_request": &pull, "repository": &repository,
            })))
            .chain(issue_comments.into_iter().map(|c| ("issue_comment", json!({
                "action": "created", "comment": c, "issue": &issue, "repository": &repository,
            }))));
        for (kind, payload) in comments {
            let id = payload.pointer("/comment/id").and_then(Value::as_i64);
            let has_user = payload
                .pointer("/comment/user")
                .is_some_and(|v| !v.is_null());
            let Some(id) = id.filter(|_| has_user) else {
                continue;
            };
            parse(kind, Some("created"), id, payload)?;
            report.comments += 1;
        }
        // The first commit, as the commits job reads it for webhook pull requests.
        let commits = fetch_commits(self.github, owner, name, number).await?;
        report.commits += commits.len();
        let answer = commits_snapshot(full_name, number, commits, fetched_at);
        parse(&answer.kind, None, number, answer.payload)?;
        // Draft intervals: the issue events that turned it into a draft or marked it ready.
        let events: Vec<Value> = self
            .github
            .get_all(
                &format!("/repos/{owner}/{name}/issues/{number}/events?per_page=100"),
                &format!("the events of {full_name}#{number}"),
                MAX_EVENTS,
            )
            .await?;
        let events: Vec<Value> = events
            .into_iter()
            .filter(|e| {
                matches!(
                    e.get("event").and_then(Value::as_str),
                    Some("convert_to_draft" | "ready_for_review")
                )
            })
            .map(|e| json!({"id": e.get("id"), "event": e.get("event"), "created_at": e.get("created_at")}))
            .collect();
        report.draft_changes += events.len();
        let payload = json!({
            "repository": &repository,
            "pull_request": {
                "number": number,
                "created_at": pull.get("created_at"),
                "draft": pull.get("draft"),
            },
            "fetched_at": rfc3339(fetched_at),
            "events": events,
        });
        parse(DRAFT_EVENTS_ANSWER, None, number, payload)?;
        Ok(effects)
    }
}

/// `owner/repo` as its two parts, refusing anything that would change the request path.
fn split_repo(repo: &str) -> Result<(&str, &str), BackfillError> {
    super::payload::owner_and_name(repo).ok_or_else(|| BackfillError::BadRepo(repo.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_owner_slash_name() {
        assert!(matches!(split_repo("octo/hello"), Ok(("octo", "hello"))));
        assert!(matches!(split_repo("o-1/r_2.js"), Ok(("o-1", "r_2.js"))));
        for bad in [
            "octo", "octo/", "/hello", "a/b/c", "a/..", "a/b?x=1", "a/b c",
        ] {
            assert!(split_repo(bad).is_err(), "{bad}");
        }
    }
}
