//! Built-in handler for repository records: turns `push`, `release`, `workflow_run`,
//! `check_run`, `deployment_status`, `star`, `fork` and `watch` payloads into [`Effect`]s that
//! record them per repository, for metrics and the UI.
//!
//! Parsing is a pure function of the payload and where it came from ([`effects_for`]); merging
//! out-of-order events and ignoring replays is the store's job (`store::records`).

use serde_json::Value;

use super::payload::{Payload, Prune};
use super::{Handler, HandlerError, HandlerFuture, JobContext};
use crate::store::{
    CiRunRecord, DeploymentStatusRecord, Effect, PushRecord, RecordEffect, ReleaseRecord,
    SocialCounts, SocialEventRecord,
};

/// The event types the handler takes (every action).
pub const RECORDED_EVENTS: [&str; 8] = [
    "push",
    "release",
    "workflow_run",
    "check_run",
    "deployment_status",
    "star",
    "fork",
    "watch",
];

/// What [`effects_for`] reads of the events it records, the only parts the handler builds.
/// A push's commits are counted, not read: a push of a thousand commits with their file lists
/// comes near GitHub's 25 MB cap, and built whole it took about five times its size in memory.
const READS: Prune = Prune::only(&[
    (
        "repository",
        Prune::Fields(&[
            "full_name",
            "stargazers_count",
            "forks_count",
            "watchers_count",
            "updated_at",
        ]),
    ),
    ("sender", Prune::Fields(&["login", "id"])),
    // push
    ("ref", Prune::Keep),
    ("before", Prune::Keep),
    ("after", Prune::Keep),
    ("commits", Prune::Each(&Prune::Fields(&["distinct"]))),
    ("forced", Prune::Keep),
    ("created", Prune::Keep),
    ("deleted", Prune::Keep),
    ("pusher", Prune::Fields(&["name"])),
    ("head_commit", Prune::Fields(&["timestamp"])),
    // release
    (
        "release",
        Prune::Object {
            members: &[("author", Prune::Fields(&["login"]))],
            rest: &Prune::Keep,
        },
    ),
    (
        "workflow_run",
        Prune::Fields(&[
            "id",
            "name",
            "status",
            "conclusion",
            "head_sha",
            "head_branch",
            "run_attempt",
            "run_started_at",
            "created_at",
            "updated_at",
        ]),
    ),
    (
        "check_run",
        Prune::only(&[
            ("check_suite", Prune::Fields(&["head_branch"])),
            ("id", Prune::Keep),
            ("name", Prune::Keep),
            ("status", Prune::Keep),
            ("conclusion", Prune::Keep),
            ("head_sha", Prune::Keep),
            ("started_at", Prune::Keep),
            ("completed_at", Prune::Keep),
        ]),
    ),
    (
        "deployment_status",
        Prune::only(&[
            ("creator", Prune::Fields(&["login"])),
            ("id", Prune::Keep),
            ("environment", Prune::Keep),
            ("state", Prune::Keep),
            ("created_at", Prune::Keep),
        ]),
    ),
    (
        "deployment",
        Prune::Fields(&["id", "environment", "sha", "ref"]),
    ),
    // fork, star
    ("forkee", Prune::Fields(&["full_name", "created_at"])),
    ("starred_at", Prune::Keep),
]);

pub struct RecordsHandler;

impl RecordsHandler {
    pub const NAME: &'static str = "records";
}

impl Handler for RecordsHandler {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn subscribes(&self, event: &str, _action: Option<&str>) -> bool {
        RECORDED_EVENTS.contains(&event)
    }

    /// Its effects follow from the payload alone.
    fn runs_in_chains(&self) -> bool {
        true
    }

    fn handle<'a>(&'a self, ctx: &'a JobContext<'a>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let payload = ctx.payload_with(&READS).await?;
            let source = Source {
                event_id: ctx.job.event_id,
                received_at: ctx.job.received_at,
            };
            effects_for(&ctx.job.event, ctx.job.action.as_deref(), &payload, source)
        })
    }
}

/// The stored delivery a payload came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub event_id: i64,
    /// When hookdock received it (Unix ms): the time of events whose payload has none.
    pub received_at: i64,
}

/// The effects of one event; events it does not record give none.
pub fn effects_for(
    event: &str,
    action: Option<&str>,
    payload: &Value,
    source: Source,
) -> Result<Vec<Effect>, HandlerError> {
    let p = Payload {
        doc: payload,
        label: match action {
            Some(a) => format!("{event}.{a}"),
            None => event.to_owned(),
        },
    };
    let records = match event {
        "push" => vec![push(&p, source)?],
        "release" => vec![release(&p, action, source)?],
        "workflow_run" => vec![workflow_run(&p, source)?],
        "check_run" => vec![check_run(&p, source)?],
        "deployment_status" => vec![deployment_status(&p, source)?],
        "star" | "fork" | "watch" => social(&p, event, action, source)?,
        _ => Vec::new(),
    };
    Ok(records
        .into_iter()
        .map(|r| Effect::Record(Box::new(r)))
        .collect())
}

fn push(p: &Payload<'_>, source: Source) -> Result<RecordEffect, HandlerError> {
    let commits = p
        .get("commits")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let distinct = commits
        .iter()
        .filter(|c| c.get("distinct").and_then(Value::as_bool) == Some(true))
        .count();
    Ok(RecordEffect::Push(PushRecord {
        event_id: source.event_id,
        repository: p.repository()?,
        ref_name: p.string("ref")?,
        before: p.string("before")?,
        after: p.string("after")?,
        commits: i64::try_from(commits.len()).unwrap_or(i64::MAX),
        distinct_commits: i64::try_from(distinct).unwrap_or(i64::MAX),
        forced: p.bool_or_false("forced"),
        created: p.bool_or_false("created"),
        deleted: p.bool_or_false("deleted"),
        // GitHub's pusher `name` is the login of the user who pushed.
        pusher: p
            .opt_string("pusher.name")
            .or_else(|| p.opt_string("sender.login")),
        head_commit_at: p.opt_time("head_commit.timestamp")?,
        received_at: source.received_at,
    }))
}

fn release(
    p: &Payload<'_>,
    action: Option<&str>,
    source: Source,
) -> Result<RecordEffect, HandlerError> {
    let action = action.ok_or_else(|| p.missing("action", "a string"))?;
    let created_at = p.opt_time("release.created_at")?;
    let published_at = p.opt_time("release.published_at")?;
    let state_at = match p.opt_time("release.updated_at")? {
        Some(t) => t,
        None => created_at.max(published_at).unwrap_or(0),
    };
    Ok(RecordEffect::Release(ReleaseRecord {
        github_id: p.i64("release.id")?,
        repository: p.repository()?,
        tag: p.string("release.tag_name")?,
        name: p.opt_string("release.name"),
        draft: p.bool_or_false("release.draft"),
        prerelease: p.bool_or_false("release.prerelease"),
        deleted: action == "deleted",
        last_action: action.to_owned(),
        author: p.opt_string("release.author.login"),
        created_at,
        published_at,
        state_at,
        last_event_id: source.event_id,
    }))
}

/// `completed - started` when both are known.
fn duration(started: Option<i64>, completed: Option<i64>) -> Option<i64> {
    Some(completed?.saturating_sub(started?).max(0))
}

fn workflow_run(p: &Payload<'_>, source: Source) -> Result<RecordEffect, HandlerError> {
    let status = p.string("workflow_run.status")?;
    let started_at = match p.opt_time("workflow_run.run_started_at")? {
        Some(t) => Some(t),
        None => p.opt_time("workflow_run.created_at")?,
    };
    let updated_at = p.opt_time("workflow_run.updated_at")?;
    // A workflow run has no completion time; its last update is the completion.
    let completed_at = if status == "completed" {
        updated_at
    } else {
        None
    };
    Ok(RecordEffect::CiRun(CiRunRecord {
        kind: "workflow_run".to_owned(),
        github_id: p.i64("workflow_run.id")?,
        repository: p.repository()?,
        name: p.string("workflow_run.name")?,
        head_sha: p.string("workflow_run.head_sha")?,
        head_branch: p.opt_string("workflow_run.head_branch"),
        progress: CiRunRecord::progress_of(&status),
        conclusion: p.opt_string("workflow_run.conclusion"),
        status,
        started_at,
        completed_at,
        duration_ms: duration(started_at, completed_at),
        run_attempt: p.opt_i64("workflow_run.run_attempt").unwrap_or(1),
        state_at: updated_at.unwrap_or(0),
        last_event_id: source.event_id,
    }))
}

fn check_run(p: &Payload<'_>, source: Source) -> Result<RecordEffect, HandlerError> {
    let status = p.string("check_run.status")?;
    let started_at = p.opt_time("check_run.started_at")?;
    let completed_at = if status == "completed" {
        p.opt_time("check_run.completed_at")?
    } else {
        None
    };
    Ok(RecordEffect::CiRun(CiRunRecord {
        kind: "check_run".to_owned(),
        github_id: p.i64("check_run.id")?,
        repository: p.repository()?,
        name: p.string("check_run.name")?,
        head_sha: p.string("check_run.head_sha")?,
        head_branch: p.opt_string("check_run.check_suite.head_branch"),
        progress: CiRunRecord::progress_of(&status),
        conclusion: p.opt_string("check_run.conclusion"),
        status,
        started_at,
        completed_at,
        duration_ms: duration(started_at, completed_at),
        run_attempt: 1,
        state_at: completed_at.or(started_at).unwrap_or(0),
        last_event_id: source.event_id,
    }))
}

fn deployment_status(p: &Payload<'_>, source: Source) -> Result<RecordEffect, HandlerError> {
    let environment = match p.opt_string("deployment_status.environment") {
        Some(env) => env,
        None => p.string("deployment.environment")?,
    };
    Ok(RecordEffect::DeploymentStatus(DeploymentStatusRecord {
        github_id: p.i64("deployment_status.id")?,
        deployment_id: p.i64("deployment.id")?,
        repository: p.repository()?,
        environment,
        state: p.string("deployment_status.state")?,
        sha: p.opt_string("deployment.sha"),
        ref_name: p.opt_string("deployment.ref"),
        creator: p.opt_string("deployment_status.creator.login"),
        created_at: p.time("deployment_status.created_at")?,
        last_event_id: source.event_id,
    }))
}

fn social(
    p: &Payload<'_>,
    event: &str,
    action: Option<&str>,
    source: Source,
) -> Result<Vec<RecordEffect>, HandlerError> {
    let repository = p.repository()?;
    let (action, at) = match event {
        "fork" => ("created", p.opt_time("forkee.created_at")?),
        "star" => (
            action.ok_or_else(|| p.missing("action", "a string"))?,
            p.opt_time("starred_at")?,
        ),
        _ => (action.unwrap_or("started"), None),
    };
    let mut records = vec![RecordEffect::SocialEvent(SocialEventRecord {
        event_id: source.event_id,
        repository: repository.clone(),
        kind: event.to_owned(),
        action: action.to_owned(),
        user_login: p.string("sender.login")?,
        user_id: p.opt_i64("sender.id"),
        fork: p.opt_string("forkee.full_name"),
        at: at.unwrap_or(source.received_at),
    })];
    if let (Some(stars), Some(forks), Some(watchers)) = (
        p.opt_i64("repository.stargazers_count"),
        p.opt_i64("repository.forks_count"),
        p.opt_i64("repository.watchers_count"),
    ) {
        records.push(RecordEffect::SocialCounts(SocialCounts {
            repository,
            stars,
            forks,
            watchers,
            reported_at: p.opt_time("repository.updated_at")?.unwrap_or(0),
            last_event_id: source.event_id,
        }));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: Source = Source {
        event_id: 7,
        received_at: 1_700_000_000_000,
    };

    /// Every subscribed fixture gives effects, and the same ones whether the payload is parsed
    /// whole or as the handler parses it ([`READS`]).
    #[test]
    fn every_subscribed_fixture_parses_and_the_handler_reads_it_as_a_whole_parse_does() {
        super::super::assert_reads_as_a_whole_parse_does(
            &RecordsHandler,
            &READS,
            35,
            &[],
            |event, action, doc| effects_for(event, action, doc, SOURCE),
        );
    }

    /// A push's commits are counted (and the distinct ones) from a parse that keeps one flag of
    /// each: what GitHub sends for a large push is mostly its commits' messages and file lists.
    #[test]
    fn a_large_push_is_counted_from_its_commits_distinct_flags_alone() {
        let commit = |i: usize| {
            serde_json::json!({
                "id": format!("{i:040x}"), "distinct": !i.is_multiple_of(3), "message": "m".repeat(200),
                "timestamp": "2026-12-01T10:00:00Z", "author": {"name": "a", "email": "a@x"},
                "added": ["src/a.rs", "src/b.rs"], "removed": [], "modified": ["README.md"]
            })
        };
        let doc = serde_json::json!({
            "ref": "refs/heads/main", "before": "0".repeat(40), "after": "1".repeat(40),
            "created": false, "deleted": false, "forced": true,
            "commits": (0..300).map(commit).collect::<Vec<_>>(),
            "head_commit": commit(299), "pusher": {"name": "octo", "email": "o@x"},
            "repository": {"full_name": "o/r", "id": 1}, "sender": {"login": "octo", "id": 2}
        });
        let bytes = serde_json::to_vec(&doc).expect("JSON");
        let pruned = super::super::payload::parse_pruned(&bytes, &READS).expect("JSON");
        let commits = pruned["commits"].as_array().expect("commits");
        assert_eq!(commits.len(), 300);
        assert_eq!(commits[1], serde_json::json!({"distinct": true}));
        assert!(pruned.to_string().len() * 20 < bytes.len(), "{pruned}");
        let effects = effects_for("push", None, &pruned, SOURCE).expect("effects");
        assert_eq!(
            effects,
            effects_for("push", None, &doc, SOURCE).expect("effects")
        );
        let Effect::Record(record) = &effects[0] else {
            panic!("{effects:?}")
        };
        let RecordEffect::Push(push) = &**record else {
            panic!("{record:?}")
        };
        assert_eq!((push.commits, push.distinct_commits), (300, 200));
        assert_eq!(push.pusher.as_deref(), Some("octo"));
        assert_eq!(push.head_commit_at, Some(1_796_119_200_000));
    }

    #[test]
    fn missing_field_is_a_permanent_error_naming_it() {
        let doc = serde_json::json!({"repository": {"full_name": "o/r"}, "check_run": {"id": 1}});
        let err = effects_for("check_run", Some("created"), &doc, SOURCE).unwrap_err();
        assert!(
            matches!(&err, HandlerError::Permanent(m)
                if m.contains("check_run.created") && m.contains("check_run.status")),
            "{err}"
        );
    }

    #[test]
    fn duration_needs_both_times_and_is_never_negative() {
        assert_eq!(duration(Some(1_000), Some(4_500)), Some(3_500));
        assert_eq!(duration(None, Some(4_500)), None);
        assert_eq!(duration(Some(1_000), None), None);
        assert_eq!(duration(Some(5_000), Some(4_000)), Some(0));
    }

    #[test]
    fn other_events_give_nothing() {
        let doc = serde_json::json!({});
        assert!(
            effects_for("issues", Some("opened"), &doc, SOURCE)
                .unwrap()
                .is_empty()
        );
        assert!(!RecordsHandler.subscribes("issues", Some("opened")));
    }
}
