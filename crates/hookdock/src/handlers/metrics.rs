//! Built-in handler for pull request metrics: turns `pull_request`, `pull_request_review`,
//! `pull_request_review_comment` and `issue_comment` (on pull requests) payloads into
//! [`Effect`]s that upsert members, pull requests, reviews and review activity. The REST API
//! answers that backfills and [`super::pull_commits`] keep are read the same way: as the
//! events they stand for, or, for a pull request's commits ([`COMMITS_ANSWER`]) and draft
//! issue events ([`DRAFT_EVENTS_ANSWER`]), as payloads of their own.
//!
//! Parsing is a pure function of the payload and the settings ([`effects_for`]), so a rebuild
//! from stored events and answers gives the same rows. It classifies (bot, by the author,
//! revert, hotfix, first commit, draft changes) but leaves merging and ordering to the store,
//! makes no network call and computes no metric.

use serde_json::Value;

/// RFC 3339 text as Unix milliseconds (shared with the other payload readers).
pub use super::payload::parse_time;
use super::payload::{Payload, Prune};
use super::{Handler, HandlerError, HandlerFuture, JobContext};
use crate::config::MetricsSettings;
use crate::store::{
    ActivityKind, DraftChangesRecord, Effect, MemberRecord, PrActivityRecord, PrCommitsRecord,
    PullRequestRecord, PullRequestSize, ReviewRecord, Store,
};

/// The payload kind of GitHub's commits of a pull request, as kept by backfills and
/// [`super::pull_commits`]: `{repository.full_name, pull_request.number, fetched_at, commits}`
/// where `commits` is the commits API's list (oldest first).
pub const COMMITS_ANSWER: &str = "pull_request_commits";
/// The payload kind of a pull request's draft changes read from its issue events by a
/// backfill: `{repository.full_name, pull_request {number, created_at, draft}, fetched_at,
/// events}` where `events` are its `convert_to_draft` and `ready_for_review` issue events.
pub const DRAFT_EVENTS_ANSWER: &str = "pull_request_draft_events";

/// A user object as [`member`] reads it.
const USER: Prune = Prune::Fields(&["login", "type", "id", "name"]);

/// What [`effects_for`] reads of a webhook payload: the handler parses no more (the repository
/// and user objects it skips are most of a pull request payload). A test checks that every
/// subscribed fixture gives the same effects parsed this way as parsed whole.
const READS: Prune = Prune::only(&[
    ("repository", Prune::Fields(&["full_name"])),
    (
        "pull_request",
        Prune::Object {
            members: &[
                ("user", USER),
                ("base", Prune::Fields(&["ref"])),
                ("head", Prune::Fields(&["ref", "sha"])),
                ("assignee", Prune::Drop),
                ("assignees", Prune::Drop),
                ("requested_reviewers", Prune::Drop),
                ("requested_teams", Prune::Drop),
                ("milestone", Prune::Drop),
                ("auto_merge", Prune::Drop),
                ("_links", Prune::Drop),
            ],
            rest: &Prune::Keep,
        },
    ),
    (
        "review",
        Prune::Object {
            members: &[("user", USER), ("_links", Prune::Drop)],
            rest: &Prune::Keep,
        },
    ),
    (
        "comment",
        Prune::Object {
            members: &[("user", USER), ("_links", Prune::Drop)],
            rest: &Prune::Keep,
        },
    ),
    (
        "issue",
        Prune::only(&[
            ("pull_request", Prune::Keep),
            ("number", Prune::Keep),
            ("user", USER),
        ]),
    ),
]);

pub struct MetricsHandler {
    settings: MetricsSettings,
}

impl MetricsHandler {
    pub const NAME: &'static str = "metrics";

    pub fn new(settings: MetricsSettings) -> MetricsHandler {
        MetricsHandler { settings }
    }
}

impl Handler for MetricsHandler {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn subscribes(&self, event: &str, action: Option<&str>) -> bool {
        match event {
            "pull_request" | "pull_request_review_comment" | "issue_comment" => true,
            "pull_request_review" => {
                matches!(action, Some("submitted" | "edited" | "dismissed"))
            }
            _ => false,
        }
    }

    /// Its effects follow from the payload alone.
    fn runs_in_chains(&self) -> bool {
        true
    }

    fn handle<'a>(&'a self, ctx: &'a JobContext<'a>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let payload = ctx.payload_with(&READS).await?;
            effects_for(
                &ctx.job.event,
                ctx.job.action.as_deref(),
                &payload,
                &self.settings,
            )
        })
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    /// Events whose effects were applied.
    pub events: u64,
    /// Backfilled REST API answers whose effects were applied.
    pub snapshots: u64,
    /// Events that could not be parsed (the reason of the first is kept).
    pub skipped: u64,
    pub first_error: Option<String>,
}

/// Recomputes every metrics row from the stored events, oldest first, and the API answers
/// backfills kept: empties the tables, then applies each one's effects, one transaction per
/// batch. Events already
/// purged by retention are gone, and reads during the rebuild see partial rows.
pub async fn rebuild(
    store: &Store,
    settings: &MetricsSettings,
) -> Result<RebuildReport, HandlerError> {
    const BATCH: u32 = 500;
    let handler = MetricsHandler::new(settings.clone());
    let mut report = RebuildReport::default();
    store.clear_metrics().await?;
    let mut after = 0;
    loop {
        let events = store.events_of_types(&TRACKED_EVENTS, after, BATCH).await?;
        let Some(last) = events.last() else {
            break;
        };
        after = last.id;
        let mut effects = Vec::new();
        for e in &events {
            if !handler.subscribes(&e.event, e.action.as_deref()) {
                continue;
            }
            let parsed = match super::stored_payload(store, e.id).await {
                Ok(payload) => effects_for(&e.event, e.action.as_deref(), &payload, settings),
                Err(err) => Err(err),
            };
            match parsed {
                Ok(mut more) => {
                    report.events += 1;
                    effects.append(&mut more);
                }
                Err(HandlerError::Permanent(reason)) => {
                    report.skipped += 1;
                    report
                        .first_error
                        .get_or_insert_with(|| format!("event {}: {reason}", e.id));
                }
                Err(retry) => return Err(retry),
            }
        }
        store.apply_effects(&effects).await?;
    }
    // What backfills read from the REST API; the merge rules make the order irrelevant.
    let mut after = 0;
    loop {
        let snapshots = store.api_snapshots(after, BATCH).await?;
        let Some((last, _)) = snapshots.last() else {
            break;
        };
        after = *last;
        let mut effects = Vec::new();
        for (id, s) in &snapshots {
            match effects_for(&s.kind, s.action.as_deref(), &s.payload, settings) {
                Ok(mut more) => {
                    report.snapshots += 1;
                    effects.append(&mut more);
                }
                Err(HandlerError::Permanent(reason)) => {
                    report.skipped += 1;
                    report
                        .first_error
                        .get_or_insert_with(|| format!("API snapshot {id}: {reason}"));
                }
                Err(retry) => return Err(retry),
            }
        }
        store.apply_effects(&effects).await?;
    }
    Ok(report)
}

/// The event types the handler takes.
const TRACKED_EVENTS: [&str; 4] = [
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "issue_comment",
];

/// The effects of one event. Events it does not track (an issue comment on an issue, a
/// pending review) give none.
pub fn effects_for(
    event: &str,
    action: Option<&str>,
    payload: &Value,
    settings: &MetricsSettings,
) -> Result<Vec<Effect>, HandlerError> {
    let p = Payload {
        doc: payload,
        label: match action {
            Some(a) => format!("{event}.{a}"),
            None => event.to_owned(),
        },
    };
    match event {
        "pull_request" => pull_request_event(&p, action, settings),
        "pull_request_review" => review_event(&p, settings),
        "pull_request_review_comment" => review_comment_event(&p, action, settings),
        "issue_comment" => issue_comment_event(&p, action, settings),
        COMMITS_ANSWER => commits_answer(&p),
        DRAFT_EVENTS_ANSWER => draft_events_answer(&p),
        _ => Ok(Vec::new()),
    }
}

/// The first commit of a pull request: the earliest `commit.author.date` of its commits (as
/// DevLake), which a rebase keeps while it moves the committer date; the first listed wins a
/// tie.
fn commits_answer(p: &Payload<'_>) -> Result<Vec<Effect>, HandlerError> {
    let commits = p
        .get("commits")
        .and_then(Value::as_array)
        .ok_or_else(|| p.missing("commits", "an array"))?;
    let mut first: Option<(i64, String)> = None;
    for (i, doc) in commits.iter().enumerate() {
        let commit = Payload {
            doc,
            label: format!("{} commits[{i}]", p.label),
        };
        let at = commit.time("commit.author.date")?;
        if first.as_ref().is_none_or(|(earliest, _)| at < *earliest) {
            first = Some((at, commit.string("sha")?));
        }
    }
    let (first_commit_at, first_commit_sha) = first.unzip();
    Ok(vec![Effect::RecordPrCommits(PrCommitsRecord {
        repo: p.repository()?,
        pr_number: p.i64("pull_request.number")?,
        as_of: p.time("fetched_at")?,
        first_commit_at,
        first_commit_sha,
        commits: i64::try_from(commits.len()).unwrap_or(i64::MAX),
    })])
}

/// A pull request's draft changes from its issue events, as the webhooks would have given
/// them: `convert_to_draft` starts a draft interval and `ready_for_review` ends one. No event
/// says a pull request was opened as a draft; it was when its first change is a
/// `ready_for_review`, or, without any, when it is a draft now.
fn draft_events_answer(p: &Payload<'_>) -> Result<Vec<Effect>, HandlerError> {
    let events = p
        .get("events")
        .and_then(Value::as_array)
        .ok_or_else(|| p.missing("events", "an array"))?;
    let mut changes = Vec::new();
    for (i, doc) in events.iter().enumerate() {
        let event = Payload {
            doc,
            label: format!("{} events[{i}]", p.label),
        };
        let draft = match event.str("event")? {
            "convert_to_draft" => true,
            "ready_for_review" => false,
            _ => continue,
        };
        changes.push((event.time("created_at")?, draft));
    }
    changes.sort_by_key(|&(at, draft)| (at, draft));
    let opened_as_draft = match changes.first() {
        Some(&(_, draft)) => !draft,
        None => p.bool_or_false("pull_request.draft"),
    };
    if opened_as_draft {
        changes.insert(0, (p.time("pull_request.created_at")?, true));
    }
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![Effect::RecordDraftChanges(DraftChangesRecord {
        repo: p.repository()?,
        pr_number: p.i64("pull_request.number")?,
        changes,
    })])
}

/// The user object at `path` of `p` as a member seen at `seen_at`.
fn member(p: &Payload<'_>, path: &str, seen_at: i64) -> Result<MemberRecord, HandlerError> {
    let login = p.str(&format!("{path}.login"))?.to_owned();
    let is_bot = p.opt_str(&format!("{path}.type")) == Some("Bot") || is_bot_login(&login);
    Ok(MemberRecord {
        github_id: p.i64(&format!("{path}.id"))?,
        name: p.opt_str(&format!("{path}.name")).map(str::to_owned),
        login,
        is_bot,
        seen_at,
    })
}

fn is_bot_login(login: &str) -> bool {
    login.ends_with("[bot]")
}

fn pull_request_event(
    p: &Payload<'_>,
    action: Option<&str>,
    settings: &MetricsSettings,
) -> Result<Vec<Effect>, HandlerError> {
    let mut pr = pull_request(p, settings)?;
    // Draft time is left out of pickup time: record each change of the draft state.
    pr.draft_change = match action {
        Some("ready_for_review") => {
            pr.ready_for_review_at = Some(pr.updated_at);
            Some((pr.updated_at, false))
        }
        Some("converted_to_draft") => Some((pr.updated_at, true)),
        Some("opened") if pr.draft => Some((pr.created_at, true)),
        _ => None,
    };
    let mut effects = author(p, &pr)?;
    effects.push(Effect::UpsertPullRequest(Box::new(pr)));
    Ok(effects)
}

/// The pull request's author as a member; none when the payload has no user (GitHub shows
/// deleted accounts as `ghost`, but a payload without one still counts the pull request).
fn author(p: &Payload<'_>, pr: &PullRequestRecord) -> Result<Vec<Effect>, HandlerError> {
    if p.get("pull_request.user").is_none() {
        return Ok(Vec::new());
    }
    Ok(vec![Effect::UpsertMember(member(
        p,
        "pull_request.user",
        pr.updated_at,
    )?)])
}

/// The `pull_request` object of any payload; review and comment payloads carry a reduced one
/// without size fields or `merged`, which gives `size: None`.
fn pull_request(
    p: &Payload<'_>,
    settings: &MetricsSettings,
) -> Result<PullRequestRecord, HandlerError> {
    let repo = p.str("repository.full_name")?.to_owned();
    let merged_at = p.opt_time("pull_request.merged_at")?;
    let state = if merged_at.is_some() || p.bool_or_false("pull_request.merged") {
        "merged"
    } else {
        match p.str("pull_request.state")? {
            "open" => "open",
            "closed" => "closed",
            _ => return Err(p.missing("pull_request.state", "`open` or `closed`")),
        }
    };
    let size = match (
        p.opt_i64("pull_request.additions"),
        p.opt_i64("pull_request.deletions"),
        p.opt_i64("pull_request.changed_files"),
        p.opt_i64("pull_request.commits"),
    ) {
        (Some(additions), Some(deletions), Some(changed_files), Some(commits)) => {
            Some(PullRequestSize {
                additions,
                deletions,
                changed_files,
                commits,
            })
        }
        _ => None,
    };
    let title = p.str("pull_request.title")?.to_owned();
    let body = p.opt_str("pull_request.body").unwrap_or("");
    let revert = detect_revert(&title, body, &repo);
    let head_ref = p.opt_str("pull_request.head.ref").map(str::to_owned);
    let mut labels: Vec<String> = p
        .get("pull_request.labels")
        .and_then(Value::as_array)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|l| l.get("name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    labels.sort();
    labels.dedup();
    let is_hotfix = is_hotfix(head_ref.as_deref(), &labels, settings);
    Ok(PullRequestRecord {
        number: p.i64("pull_request.number")?,
        github_id: p.i64("pull_request.id")?,
        author_id: p.opt_i64("pull_request.user.id"),
        title,
        state,
        draft: p.bool_or_false("pull_request.draft"),
        base_ref: p.opt_str("pull_request.base.ref").map(str::to_owned),
        head_ref,
        head_sha: p.opt_str("pull_request.head.sha").map(str::to_owned),
        merge_commit_sha: p
            .opt_str("pull_request.merge_commit_sha")
            .map(str::to_owned),
        created_at: p.time("pull_request.created_at")?,
        ready_for_review_at: None,
        draft_change: None,
        merged_at,
        closed_at: p.opt_time("pull_request.closed_at")?,
        size,
        is_revert: revert.is_revert,
        reverts_sha: revert.sha,
        reverts_number: revert.number,
        is_hotfix,
        labels: serde_json::to_string(&labels).unwrap_or_else(|_| "[]".to_owned()),
        updated_at: p.time("pull_request.updated_at")?,
        repo,
    })
}

fn review_event(p: &Payload<'_>, settings: &MetricsSettings) -> Result<Vec<Effect>, HandlerError> {
    let pr = pull_request(p, settings)?;
    let (repo, number, author_id) = (pr.repo.clone(), pr.number, pr.author_id);
    let mut effects = author(p, &pr)?;
    effects.push(Effect::UpsertPullRequest(Box::new(pr)));
    let state = p.str("review.state")?.to_ascii_lowercase();
    // A pending review (not submitted) has no time and is not a review yet.
    let Some(submitted_at) = p.opt_time("review.submitted_at")? else {
        return Ok(effects);
    };
    if state == "pending" {
        return Ok(effects);
    }
    let reviewer = member(p, "review.user", submitted_at)?;
    let review_id = p.i64("review.id")?;
    let counts = counts_as_review(&reviewer, author_id, settings);
    let reviewer_id = reviewer.github_id;
    effects.push(Effect::UpsertMember(reviewer));
    effects.push(Effect::UpsertReview(ReviewRecord {
        github_id: review_id,
        repo: repo.clone(),
        pr_number: number,
        reviewer_id,
        state,
        submitted_at,
    }));
    effects.push(Effect::RecordPrActivity(PrActivityRecord {
        kind: ActivityKind::Review,
        source_id: review_id,
        repo,
        pr_number: number,
        actor_id: reviewer_id,
        review_id: None,
        at: submitted_at,
        counts,
        deleted: false,
    }));
    Ok(effects)
}

fn review_comment_event(
    p: &Payload<'_>,
    action: Option<&str>,
    settings: &MetricsSettings,
) -> Result<Vec<Effect>, HandlerError> {
    let pr = pull_request(p, settings)?;
    let mut effects = author(p, &pr)?;
    let at = p.time("comment.created_at")?;
    let commenter = member(
        p,
        "comment.user",
        p.time("comment.updated_at").unwrap_or(at),
    )?;
    let activity = PrActivityRecord {
        kind: ActivityKind::ReviewComment,
        source_id: p.i64("comment.id")?,
        repo: pr.repo.clone(),
        pr_number: pr.number,
        actor_id: commenter.github_id,
        review_id: p.opt_i64("comment.pull_request_review_id"),
        at,
        counts: counts_as_review(&commenter, pr.author_id, settings),
        deleted: action == Some("deleted"),
    };
    effects.push(Effect::UpsertMember(commenter));
    effects.push(Effect::UpsertPullRequest(Box::new(pr)));
    effects.push(Effect::RecordPrActivity(activity));
    Ok(effects)
}

fn issue_comment_event(
    p: &Payload<'_>,
    action: Option<&str>,
    settings: &MetricsSettings,
) -> Result<Vec<Effect>, HandlerError> {
    // Comments on issues are not pull request activity.
    if p.get("issue.pull_request").is_none() {
        return Ok(Vec::new());
    }
    let at = p.time("comment.created_at")?;
    let commenter = member(
        p,
        "comment.user",
        p.time("comment.updated_at").unwrap_or(at),
    )?;
    let activity = PrActivityRecord {
        kind: ActivityKind::IssueComment,
        source_id: p.i64("comment.id")?,
        repo: p.str("repository.full_name")?.to_owned(),
        pr_number: p.i64("issue.number")?,
        actor_id: commenter.github_id,
        review_id: None,
        at,
        counts: counts_as_review(&commenter, p.opt_i64("issue.user.id"), settings),
        deleted: action == Some("deleted"),
    };
    Ok(vec![
        Effect::UpsertMember(commenter),
        Effect::RecordPrActivity(activity),
    ])
}

/// Whether a reviewer's action can be the first review: never the author's own, and a bot's
/// only when configured.
fn counts_as_review(
    actor: &MemberRecord,
    author_id: Option<i64>,
    settings: &MetricsSettings,
) -> bool {
    author_id != Some(actor.github_id) && (!actor.is_bot || settings.count_bot_reviews)
}

fn is_hotfix(head_ref: Option<&str>, labels: &[String], settings: &MetricsSettings) -> bool {
    let by_branch = head_ref.is_some_and(|head| {
        settings
            .hotfix_branch_prefixes
            .iter()
            .any(|prefix| head.starts_with(prefix.as_str()))
    });
    let by_label = labels.iter().any(|label| {
        settings
            .hotfix_labels
            .iter()
            .any(|hotfix| hotfix.eq_ignore_ascii_case(label))
    });
    by_branch || by_label
}

/// What a pull request's title and body say about reverting.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RevertInfo {
    pub is_revert: bool,
    /// `Reverts owner/repo#N` in the body, for this repository.
    pub number: Option<i64>,
    /// `This reverts commit SHA` in the body.
    pub sha: Option<String>,
}

/// Recognizes GitHub's revert pull requests (title `Revert "…"`, body `Reverts owner/repo#N`)
/// and `git revert` messages (`This reverts commit SHA`).
pub fn detect_revert(title: &str, body: &str, repo: &str) -> RevertInfo {
    let by_title = title.starts_with("Revert \"") && title.ends_with('"') && title.len() > 9;
    let mut info = RevertInfo {
        is_revert: by_title,
        ..RevertInfo::default()
    };
    for word_start in find_all(body, "Reverts ") {
        let rest = &body[word_start + "Reverts ".len()..];
        let token: &str = rest.split_whitespace().next().unwrap_or("");
        let token = token.trim_end_matches(['.', ',', ')', ';', ':']);
        if let Some((target_repo, number)) = token.rsplit_once('#')
            && target_repo.contains('/')
            && let Ok(number) = number.parse::<i64>()
        {
            info.is_revert = true;
            if target_repo.eq_ignore_ascii_case(repo) && info.number.is_none() {
                info.number = Some(number);
            }
        }
    }
    for start in find_all(body, "This reverts commit ") {
        let rest = &body[start + "This reverts commit ".len()..];
        let sha: String = rest
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if (7..=40).contains(&sha.len()) {
            info.is_revert = true;
            info.sha.get_or_insert(sha);
        }
    }
    info
}

fn find_all<'a>(haystack: &'a str, needle: &'a str) -> impl Iterator<Item = usize> + 'a {
    haystack.match_indices(needle).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MetricsSettings {
        MetricsSettings {
            enabled: true,
            hotfix_branch_prefixes: vec!["hotfix/".into(), "hotfix-".into()],
            hotfix_labels: vec!["hotfix".into()],
            count_bot_reviews: false,
            fetch_commits: true,
            timezone: "UTC".into(),
            working_days: vec![
                "mon".into(),
                "tue".into(),
                "wed".into(),
                "thu".into(),
                "fri".into(),
            ],
            working_hours: "09:00-17:00".into(),
            holidays: vec![],
            teams: vec![],
        }
    }

    fn fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/webhooks")
            .join(format!("{name}.json"));
        serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("JSON")
    }

    /// Every subscribed fixture gives effects (an issue comment's may be none), and the same
    /// ones whether the payload is parsed whole or as the handler parses it ([`READS`]).
    #[test]
    fn every_subscribed_fixture_parses_and_the_handler_reads_it_as_a_whole_parse_does() {
        super::super::assert_reads_as_a_whole_parse_does(
            &MetricsHandler::new(settings()),
            &READS,
            30,
            &["issue_comment"],
            |event, action, doc| effects_for(event, action, doc, &settings()),
        );
    }

    #[test]
    fn opened_fixture_gives_member_and_full_pull_request() {
        let effects = effects_for(
            "pull_request",
            Some("opened"),
            &fixture("pull_request.opened.0"),
            &settings(),
        )
        .expect("parses");
        let [Effect::UpsertMember(author), Effect::UpsertPullRequest(pr)] = effects.as_slice()
        else {
            panic!("{effects:?}")
        };
        assert_eq!(
            (author.github_id, author.login.as_str()),
            (21031067, "Codertocat")
        );
        assert!(!author.is_bot);
        assert_eq!(pr.repo, "Codertocat/Hello-World");
        assert_eq!((pr.number, pr.github_id, pr.state), (2, 279147437, "open"));
        assert_eq!(pr.created_at, parse_time("2019-05-15T15:20:33Z").unwrap());
        assert_eq!(
            pr.size,
            Some(PullRequestSize {
                additions: 1,
                deletions: 1,
                changed_files: 1,
                commits: 1
            })
        );
        assert_eq!(pr.head_ref.as_deref(), Some("changes"));
        assert_eq!(pr.labels, "[]");
        assert!(!pr.is_revert && !pr.is_hotfix);
    }

    #[test]
    fn review_by_the_author_is_stored_but_does_not_count() {
        let effects = effects_for(
            "pull_request_review",
            Some("submitted"),
            &fixture("pull_request_review.submitted.1"),
            &settings(),
        )
        .expect("parses");
        let Some(Effect::UpsertPullRequest(pr)) = effects.get(1) else {
            panic!("{effects:?}")
        };
        assert_eq!(pr.size, None, "reduced pull_request object");
        assert!(effects.iter().any(|e| matches!(e, Effect::UpsertReview(r)
            if r.github_id == 237895671 && r.state == "commented")));
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::RecordPrActivity(a)
            if a.kind == ActivityKind::Review && !a.counts))
        );
    }

    #[test]
    fn missing_field_is_a_permanent_error_naming_it() {
        let mut doc = fixture("pull_request.opened.0");
        doc["pull_request"]
            .as_object_mut()
            .unwrap()
            .remove("created_at");
        let err = effects_for("pull_request", Some("opened"), &doc, &settings()).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m)
            if m.contains("pull_request.opened") && m.contains("pull_request.created_at")),
            "{err}"
        );
    }

    #[test]
    fn a_pull_request_without_user_is_kept_without_author() {
        let mut doc = fixture("pull_request.opened.0");
        doc["pull_request"]["user"] = Value::Null;
        let effects =
            effects_for("pull_request", Some("opened"), &doc, &settings()).expect("parses");
        let [Effect::UpsertPullRequest(pr)] = effects.as_slice() else {
            panic!("{effects:?}")
        };
        assert_eq!(pr.author_id, None);
    }

    #[test]
    fn issue_comments_on_issues_are_ignored() {
        let effects = effects_for(
            "issue_comment",
            Some("created"),
            &fixture("issue_comment.created.0"),
            &settings(),
        )
        .expect("parses");
        assert!(effects.is_empty());
    }

    #[test]
    fn reverts_are_recognized() {
        let repo = "octo/app";
        assert_eq!(
            detect_revert("Revert \"Add thing\"", "Reverts octo/app#12", repo),
            RevertInfo {
                is_revert: true,
                number: Some(12),
                sha: None
            }
        );
        assert_eq!(
            detect_revert(
                "Undo",
                "This reverts commit C4295BD74FB0F4FDA03689C3DF3F2803B658FD85.",
                repo
            ),
            RevertInfo {
                is_revert: true,
                number: None,
                sha: Some("c4295bd74fb0f4fda03689c3df3f2803b658fd85".into())
            }
        );
        let other = detect_revert("x", "Reverts other/repo#3", repo);
        assert!(other.is_revert && other.number.is_none());
        assert!(!detect_revert("Revert the revert plan", "Reverts nothing", repo).is_revert);
        assert!(!detect_revert("Fix", "", repo).is_revert);
    }

    fn commit(sha: &str, authored: &str, committed: &str) -> Value {
        serde_json::json!({"sha": sha, "commit": {"author": {"date": authored},
            "committer": {"date": committed}}})
    }

    #[test]
    fn the_first_commit_is_the_earliest_written_not_the_first_listed() {
        let answer = serde_json::json!({
            "repository": {"full_name": "o/r"},
            "pull_request": {"number": 7},
            "fetched_at": "2024-01-03T00:00:00.000Z",
            "commits": [
                commit("a1", "2024-01-02T10:00:00Z", "2024-01-02T12:00:00Z"),
                // Rebased onto the first: written earlier, committed later.
                commit("b2", "2024-01-01T09:00:00Z", "2024-01-02T12:00:01Z"),
                commit("c3", "2024-01-01T09:00:00Z", "2024-01-02T12:00:02Z"),
            ],
        });
        let effects = effects_for(COMMITS_ANSWER, None, &answer, &settings()).expect("parses");
        assert_eq!(
            effects,
            [Effect::RecordPrCommits(PrCommitsRecord {
                repo: "o/r".into(),
                pr_number: 7,
                as_of: parse_time("2024-01-03T00:00:00Z").unwrap(),
                first_commit_at: parse_time("2024-01-01T09:00:00Z"),
                first_commit_sha: Some("b2".into()),
                commits: 3,
            })]
        );

        let mut bad = answer.clone();
        bad["commits"][1]["commit"]["author"]
            .as_object_mut()
            .unwrap()
            .remove("date");
        let err = effects_for(COMMITS_ANSWER, None, &bad, &settings()).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m)
                if m.contains("commits[1]") && m.contains("commit.author.date")),
            "{err}"
        );
    }

    fn draft_events(draft_now: bool, events: &[(&str, &str)]) -> Vec<Effect> {
        let answer = serde_json::json!({
            "repository": {"full_name": "o/r"},
            "pull_request": {"number": 7, "created_at": "2024-01-01T08:00:00Z", "draft": draft_now},
            "fetched_at": "2024-01-03T00:00:00.000Z",
            "events": events.iter().map(|(event, at)| serde_json::json!({"event": event,
                "created_at": at})).collect::<Vec<_>>(),
        });
        effects_for(DRAFT_EVENTS_ANSWER, None, &answer, &settings()).expect("parses")
    }

    fn changes(effects: &[Effect]) -> Vec<(String, bool)> {
        let [Effect::RecordDraftChanges(d)] = effects else {
            panic!("{effects:?}")
        };
        assert_eq!((d.repo.as_str(), d.pr_number), ("o/r", 7));
        d.changes
            .iter()
            .map(|(at, draft)| (crate::store::rfc3339(*at), *draft))
            .collect()
    }

    #[test]
    fn draft_changes_come_from_issue_events_and_an_opening_as_draft_is_inferred() {
        let t = |h: u8| format!("2024-01-01T{h:02}:00:00.000Z");
        // Opened as a draft (the first change marks it ready), converted again later; other
        // events are not draft changes.
        let e = draft_events(
            false,
            &[
                ("labeled", "2024-01-01T08:30:00Z"),
                ("convert_to_draft", "2024-01-01T12:00:00Z"),
                ("ready_for_review", "2024-01-01T10:00:00Z"),
                ("ready_for_review", "2024-01-01T13:00:00Z"),
            ],
        );
        assert_eq!(
            changes(&e),
            [(t(8), true), (t(10), false), (t(12), true), (t(13), false)]
        );
        // Opened ready, converted and still a draft.
        let e = draft_events(true, &[("convert_to_draft", "2024-01-01T09:00:00Z")]);
        assert_eq!(changes(&e), [(t(9), true)]);
        // No event: a draft now was opened as one; a ready one never was a draft.
        assert_eq!(changes(&draft_events(true, &[])), [(t(8), true)]);
        assert_eq!(
            draft_events(false, &[("labeled", "2024-01-01T09:00:00Z")]),
            []
        );
    }

    #[test]
    fn hotfix_by_branch_prefix_or_label() {
        let s = settings();
        assert!(is_hotfix(Some("hotfix/login"), &[], &s));
        assert!(is_hotfix(Some("hotfix-1"), &[], &s));
        assert!(is_hotfix(Some("feature"), &["HotFix".into()], &s));
        assert!(!is_hotfix(Some("feature/hotfix"), &["bug".into()], &s));
        assert!(!is_hotfix(None, &[], &s));
    }

    #[test]
    fn bots_are_recognized_by_type_or_login() {
        let doc = serde_json::json!({"u": {"id": 1, "login": "renovate[bot]", "type": "User"},
            "v": {"id": 2, "login": "ci", "type": "Bot"}, "w": {"id": 3, "login": "ann", "type": "User"}});
        let p = Payload {
            doc: &doc,
            label: "test".into(),
        };
        assert!(member(&p, "u", 0).unwrap().is_bot);
        assert!(member(&p, "v", 0).unwrap().is_bot);
        assert!(!member(&p, "w", 0).unwrap().is_bot);
    }
}
