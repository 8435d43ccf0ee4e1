//! The review automation: on a pull request's new head (opened, reopened, synchronize, ready
//! for review) or `/review`, review the head commit once.
//!
//! Coalescing: a run whose pull request has a newer review job waiting is marked `superseded`
//! and does nothing, so a burst of pushes gets one review, of the newest head. A head commit
//! already reviewed is never reviewed again (a replay, a retry after a crash between GitHub
//! and the database: the review carries the head SHA in a hidden marker, which is looked for
//! before posting).

use std::sync::Arc;

use serde_json::{Value, json};

use super::diff::{Anchored, Budget, anchor, coverage, select};
use super::llm::LlmError;
use super::{Finding, PullInfo, Severity, rules};
use crate::github::{InlineComment, NewReview, ReviewEvent, Side};
use crate::handlers::HandlerError;
use crate::handlers::automation::{
    Automation, AutomationFuture, Outcome, Run, is_bot, marker, short_sha,
};
use crate::handlers::commands::parse::{Command, parse};
use crate::handlers::labeling::{classifier, pull_files};
use crate::handlers::repo_config::{RepoConfig, ReviewerKind};
use crate::store::{
    AutomationRecord, Effect, FindingRecord, LlmCallRecord, ReviewRunRecord, now_ms,
};

pub const NAME: &str = "review";
const SUMMARY_MARKER: &str = "review-summary";
/// `pull_request` actions that bring a head to review. Only a newer one of these supersedes a
/// waiting review (a plain comment, which also makes a review job, must not).
const NEW_HEAD_ACTIONS: &[&str] = &["opened", "reopened", "synchronize", "ready_for_review"];

pub struct Review;

/// The review automation, for registration.
pub fn automations() -> Vec<Arc<dyn Automation>> {
    vec![Arc::new(Review)]
}

fn review_marker(sha: &str) -> String {
    marker(&format!("review sha={sha}"))
}

impl Automation for Review {
    fn name(&self) -> &'static str {
        NAME
    }

    fn subscribes(&self, event: &str, action: Option<&str>) -> bool {
        match event {
            "pull_request" => action.is_some_and(|a| NEW_HEAD_ACTIONS.contains(&a)),
            "issue_comment" => action == Some("created"),
            _ => false,
        }
    }

    fn enabled(&self, config: &RepoConfig) -> bool {
        config.review.enabled
    }

    fn reports_config_errors(&self) -> bool {
        true
    }

    fn run<'a>(&'a self, run: &'a Run<'a>, config: &'a RepoConfig) -> AutomationFuture<'a> {
        Box::pin(async move {
            let Some(number) = run.event.number else {
                return Ok(Outcome::default());
            };
            let pull = match trigger(run, number).await? {
                Some(pull) => pull,
                None => return Ok(Outcome::default()),
            };
            review_head(run, config, number, &pull).await
        })
    }
}

/// The pull request to review, or `None` when the event asks for no review.
async fn trigger(run: &Run<'_>, number: u64) -> Result<Option<Value>, HandlerError> {
    let event = run.event;
    if event.event == "pull_request" {
        return Ok(event.pull().cloned());
    }
    // issue_comment: only `/review` on a pull request, by someone who may write.
    if !event.comment_on_pull() || event.sender_is_bot {
        return Ok(None);
    }
    let body = event
        .payload
        .pointer("/comment/body")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !parse(body).iter().any(|c| matches!(c, Command::Review)) {
        return Ok(None);
    }
    let author = event.sender.as_deref().unwrap_or_default();
    let permission = run
        .services
        .permission(run.owner(), run.repo(), author)
        .await?;
    if !matches!(permission.as_str(), "admin" | "maintain" | "write") {
        // The commands automation answers with the permission needed.
        return Ok(None);
    }
    Ok(Some(
        run.gh.pull_request(run.owner(), run.repo(), number).await?,
    ))
}

fn text<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

async fn review_head(
    run: &Run<'_>,
    config: &RepoConfig,
    number: u64,
    pull: &Value,
) -> Result<Outcome, HandlerError> {
    let event = run.event;
    let repository = event.full_name();
    let head_sha = text(pull, "/head/sha").to_owned();
    let number_i = i64::try_from(number).unwrap_or(i64::MAX);
    let skip = |reason: String| {
        run.record(
            Some(number),
            "skipped",
            json!({ "head_sha": head_sha, "reason": reason }),
        );
        Ok(Outcome::default())
    };
    if pull.get("draft").and_then(Value::as_bool) == Some(true) && !config.review.drafts {
        return skip("draft pull request (set `review.drafts: true` to review drafts)".into());
    }
    if is_bot(pull.get("user")) && !config.bots {
        return skip("opened by a bot (set `bots: true` to review these)".into());
    }
    if text(pull, "/state") == "closed" {
        return skip("the pull request is closed".into());
    }
    if !run.dry_run {
        let store = run.services.store();
        if let Some(newer) = store
            .newer_waiting_job(
                NAME,
                &format!("{repository}#{number}"),
                event.event_id,
                "pull_request",
                NEW_HEAD_ACTIONS,
            )
            .await?
        {
            run.record(
                Some(number),
                "superseded",
                json!({ "head_sha": head_sha, "by_event": newer }),
            );
            return Ok(Outcome {
                review: Some(run_record(run, number_i, &head_sha, "superseded")),
                ..Outcome::default()
            });
        }
        if let Some(done) = store
            .reviewed_head(&repository, number_i, &head_sha)
            .await?
        {
            return skip(format!(
                "{} was already reviewed (review run {})",
                short_sha(&head_sha),
                done.id
            ));
        }
        // Posted before a crash kept the database from knowing: adopt it.
        let posted = run
            .gh
            .list_reviews(run.owner(), run.repo(), number)
            .await?
            .into_iter()
            .find(|r| {
                r.body
                    .as_deref()
                    .is_some_and(|b| b.contains(&review_marker(&head_sha)))
            });
        if let Some(posted) = posted {
            let mut record = run_record(run, number_i, &head_sha, "reviewed");
            record.github_review_id = i64::try_from(posted.id).ok();
            record.summary = posted.body;
            run.record(
                Some(number),
                "skipped",
                json!({ "head_sha": head_sha, "reason": "already posted", "review_id": posted.id }),
            );
            return Ok(Outcome {
                review: Some(record),
                ..Outcome::default()
            });
        }
    }

    let info = PullInfo {
        repository: repository.clone(),
        number,
        title: text(pull, "/title").to_owned(),
        body: text(pull, "/body").to_owned(),
        author: text(pull, "/user/login").to_owned(),
        base_ref: text(pull, "/base/ref").to_owned(),
        head_sha: head_sha.clone(),
    };
    let files = pull_files(run, number).await?;
    let classifier = classifier(run, config, &head_sha).await?;
    let budget = Budget {
        max_patch_bytes: config.review.max_patch_bytes,
        max_files: config.review.max_files,
    };
    let input = select(info, files, &classifier, &budget);
    let mut findings = rules::review(&input, &config.review.rules);
    let mut notes = Vec::new();
    let mut llm_calls = Vec::new();
    let mut reviewer = "rules".to_owned();
    let mut llm_summary = None;
    if config.review.reviewer == ReviewerKind::Llm {
        match &run.services.llm {
            None => notes.push(
                "The LLM reviewer was asked for, but this server has no model configured (`HOOKDOCK_LLM_BASE_URL`): rule findings only.".to_owned(),
            ),
            Some(llm) => {
                let outcome = llm.review(&input).await;
                let now = now_ms();
                llm_calls = outcome
                    .calls
                    .iter()
                    .map(|c| LlmCallRecord {
                        event_id: event.event_id,
                        repository: repository.clone(),
                        number: number_i,
                        head_sha: head_sha.clone(),
                        model: c.model.clone(),
                        attempt: i64::from(c.attempt),
                        prompt_bytes: i64::try_from(c.prompt_bytes).unwrap_or(i64::MAX),
                        duration_ms: i64::try_from(c.duration_ms).unwrap_or(i64::MAX),
                        outcome: c.outcome.clone(),
                        created_at: now,
                    })
                    .collect();
                if !outcome.omitted.is_empty() {
                    notes.push(format!(
                        "Left out of the model's input (size limit): {}.",
                        outcome.omitted.join(", ")
                    ));
                }
                match outcome.result {
                    Ok(review) => {
                        reviewer = format!("llm ({})", llm_model(&outcome.calls));
                        llm_summary = Some(review.summary);
                        findings.extend(review.findings);
                    }
                    Err(e) if e.is_transient() && !run.dry_run => {
                        return Err(transient(run, llm_calls, &e).await);
                    }
                    Err(e) => notes.push(format!(
                        "The model's answer could not be used ({e}): rule findings only."
                    )),
                }
            }
        }
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let Anchored {
        mut inline,
        mut summary,
    } = anchor(findings, &input.files);
    if inline.len() > config.review.max_comments {
        summary.extend(inline.split_off(config.review.max_comments));
    }
    let covered = coverage(&input);
    let body = review_body(
        &head_sha,
        llm_summary.as_deref(),
        &summary,
        &covered.describe(),
        &notes,
        inline.len(),
    );
    let comment_bodies: Vec<String> = inline.iter().map(inline_body).collect();
    let comments: Vec<InlineComment<'_>> = inline
        .iter()
        .zip(&comment_bodies)
        .filter_map(|(f, body)| {
            Some(InlineComment {
                path: f.path.as_deref()?,
                line: f.line?,
                side: Side::Right,
                body,
            })
        })
        .collect();
    let github_review_id = if inline.is_empty() && summary.is_empty() {
        None
    } else {
        run.create_review(
            number,
            &NewReview {
                commit_id: Some(&head_sha),
                body: &body,
                event: ReviewEvent::Comment,
                comments: &comments,
            },
        )
        .await?
    };
    let total = inline.len() + summary.len();
    let summary_comment = format!(
        "### hookdock review\n\nReviewed `{}` with {reviewer}: {}.\n\n{}",
        short_sha(&head_sha),
        match total {
            0 => "no findings".to_owned(),
            1 => "1 finding".to_owned(),
            n => format!("{n} findings ({} on lines of the diff)", inline.len()),
        },
        covered.describe()
    );
    run.upsert_comment(number, &marker(SUMMARY_MARKER), &summary_comment)
        .await?;
    if run.dry_run {
        return Ok(Outcome {
            llm_calls,
            ..Outcome::default()
        });
    }
    let mut record = run_record(run, number_i, &head_sha, "reviewed");
    record.reviewer = Some(reviewer);
    record.github_review_id = github_review_id.and_then(|id| i64::try_from(id).ok());
    record.summary = Some(body);
    record.coverage = serde_json::to_value(&covered).ok();
    record.findings = inline
        .iter()
        .map(|f| finding_record(f, "inline"))
        .chain(summary.iter().map(|f| finding_record(f, "summary")))
        .collect();
    Ok(Outcome {
        review: Some(record),
        llm_calls,
    })
}

/// The model failed in a way worth another try: keep the audit of its calls (the job's own
/// record is only written on success) and let the queue retry with backoff.
async fn transient(run: &Run<'_>, calls: Vec<LlmCallRecord>, e: &LlmError) -> HandlerError {
    let record = AutomationRecord {
        llm_calls: calls,
        ..AutomationRecord::default()
    };
    if let Err(error) = run
        .services
        .store()
        .apply_effects(&[Effect::RecordAutomation(Box::new(record))])
        .await
    {
        tracing::warn!(%error, "could not record the language model calls");
    }
    HandlerError::Retry {
        message: format!("the language model failed: {e}"),
        retry_after: None,
    }
}

fn llm_model(calls: &[super::llm::LlmCall]) -> String {
    calls.last().map(|c| c.model.clone()).unwrap_or_default()
}

fn run_record(run: &Run<'_>, number: i64, head_sha: &str, status: &str) -> ReviewRunRecord {
    ReviewRunRecord {
        repository: run.event.full_name(),
        number,
        head_sha: head_sha.to_owned(),
        event_id: run.event.event_id,
        status: status.to_owned(),
        reviewer: None,
        github_review_id: None,
        summary: None,
        coverage: None,
        findings: Vec::new(),
        created_at: now_ms(),
    }
}

fn finding_record(f: &Finding, placement: &str) -> FindingRecord {
    FindingRecord {
        path: f.path.clone(),
        line: f.line.and_then(|l| i64::try_from(l).ok()),
        severity: f.severity.as_str().to_owned(),
        message: f.message.clone(),
        source: f.source.clone(),
        placement: placement.to_owned(),
    }
}

fn badge(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "**error**",
        Severity::Warning => "**warning**",
        Severity::Info => "info",
    }
}

fn inline_body(f: &Finding) -> String {
    format!("{} ({}): {}", badge(f.severity), f.source, f.message)
}

fn review_body(
    head_sha: &str,
    llm_summary: Option<&str>,
    summary: &[Finding],
    coverage: &str,
    notes: &[String],
    inline: usize,
) -> String {
    let mut out = format!(
        "{}\n### hookdock review of `{}`\n\n",
        review_marker(head_sha),
        short_sha(head_sha)
    );
    if let Some(s) = llm_summary.filter(|s| !s.trim().is_empty()) {
        out.push_str(s.trim());
        out.push_str("\n\n");
    }
    if inline > 0 {
        out.push_str(&format!("{inline} comment(s) on lines of the diff.\n\n"));
    }
    if !summary.is_empty() {
        out.push_str("Findings not on a line of the diff:\n");
        for f in summary {
            let place = match (&f.path, f.line) {
                (Some(p), Some(l)) => format!("`{p}:{l}` "),
                (Some(p), None) => format!("`{p}` "),
                _ => String::new(),
            };
            out.push_str(&format!("- {place}{}\n", inline_body(f)));
        }
        out.push('\n');
    }
    out.push_str(coverage);
    for note in notes {
        out.push_str("\n\n");
        out.push_str(note);
    }
    out
}
