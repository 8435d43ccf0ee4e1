//! SQL for repository records: pushes, releases, CI runs (workflow runs and check runs),
//! deployment statuses, and stars/forks/watchers.
//!
//! Writes arrive as [`RecordEffect`]s from the records handler and run inside the transaction
//! that finishes its job. Rows of one delivery (pushes, social events) are keyed by the event,
//! so a replay changes nothing. Rows that several deliveries describe (a release, a run, a
//! deployment status, a repository's counts) are merged: their state columns follow the newest
//! event by an order key that ends with the event id, compared as a row value. So any arrival
//! order, and any replay of an older event, leaves the newest state.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{Arg, Sql, WriteConn};
use super::{Store, StoreError, opt_text, rfc3339, ser_time};

/// Serializes optional Unix milliseconds as RFC 3339 or `null`.
fn ser_opt_time<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&rfc3339(*ms)),
        None => s.serialize_none(),
    }
}

/// A push to a branch or tag: one row per delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushRecord {
    pub event_id: i64,
    pub repository: String,
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub before: String,
    pub after: String,
    /// Commits in the payload.
    pub commits: i64,
    /// Of those, commits pushed for the first time (`distinct: true`).
    pub distinct_commits: i64,
    pub forced: bool,
    pub created: bool,
    pub deleted: bool,
    pub pusher: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    pub head_commit_at: Option<i64>,
    #[serde(serialize_with = "ser_time")]
    pub received_at: i64,
}

/// A release as one event describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseRecord {
    pub github_id: i64,
    pub repository: String,
    pub tag: String,
    pub name: Option<String>,
    pub draft: bool,
    pub prerelease: bool,
    /// Once deleted, always deleted.
    pub deleted: bool,
    /// The action of the newest event (`deleted` once deleted).
    pub last_action: String,
    pub author: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    pub created_at: Option<i64>,
    #[serde(serialize_with = "ser_opt_time")]
    pub published_at: Option<i64>,
    /// GitHub's time of this state: `release.updated_at`, else its latest known time.
    #[serde(serialize_with = "ser_time")]
    pub state_at: i64,
    pub last_event_id: i64,
}

/// What a CI run is.
pub const CI_KINDS: [&str; 2] = ["workflow_run", "check_run"];

/// A workflow run or check run as one event describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CiRunRecord {
    /// `workflow_run` or `check_run`.
    pub kind: String,
    pub github_id: i64,
    pub repository: String,
    pub name: String,
    pub head_sha: String,
    pub head_branch: Option<String>,
    pub status: String,
    pub conclusion: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    pub started_at: Option<i64>,
    #[serde(serialize_with = "ser_opt_time")]
    pub completed_at: Option<i64>,
    /// `completed_at - started_at`; `None` until completed.
    pub duration_ms: Option<i64>,
    pub run_attempt: i64,
    /// 0 requested/queued/waiting, 1 in progress, 2 completed: a state never goes back.
    #[serde(skip)]
    pub progress: i64,
    /// GitHub's time of this state (0 when the payload has none).
    #[serde(serialize_with = "ser_time")]
    pub state_at: i64,
    pub last_event_id: i64,
}

impl CiRunRecord {
    /// The progress rank of a GitHub status.
    pub fn progress_of(status: &str) -> i64 {
        match status {
            "completed" => 2,
            "in_progress" => 1,
            _ => 0,
        }
    }
}

/// A deployment status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentStatusRecord {
    pub github_id: i64,
    pub deployment_id: i64,
    pub repository: String,
    pub environment: String,
    pub state: String,
    pub sha: Option<String>,
    #[serde(rename = "ref")]
    pub ref_name: Option<String>,
    pub creator: Option<String>,
    #[serde(serialize_with = "ser_time")]
    pub created_at: i64,
    pub last_event_id: i64,
}

/// One star, fork or watch delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocialEventRecord {
    pub event_id: i64,
    pub repository: String,
    /// `star`, `fork` or `watch`.
    pub kind: String,
    /// `created`/`deleted` (star), `started` (watch), `created` (fork).
    pub action: String,
    pub user_login: String,
    pub user_id: Option<i64>,
    /// The new fork's `owner/name`.
    pub fork: Option<String>,
    #[serde(serialize_with = "ser_time")]
    pub at: i64,
}

/// A repository's counts as a payload reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocialCounts {
    pub repository: String,
    pub stars: i64,
    pub forks: i64,
    pub watchers: i64,
    /// `repository.updated_at` of the report (0 when the payload has none).
    #[serde(serialize_with = "ser_time")]
    pub reported_at: i64,
    pub last_event_id: i64,
}

/// A write of the records handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordEffect {
    Push(PushRecord),
    Release(ReleaseRecord),
    CiRun(CiRunRecord),
    DeploymentStatus(DeploymentStatusRecord),
    SocialEvent(SocialEventRecord),
    SocialCounts(SocialCounts),
}

fn flag(v: bool) -> i64 {
    i64::from(v)
}

/// `INSERT INTO table (columns) VALUES (placeholders)`.
fn insert<'a>(table: &str, values: Vec<(&str, Arg<'a>)>) -> Sql<'a> {
    let columns: Vec<&str> = values.iter().map(|(c, _)| *c).collect();
    let mut sql = Sql::new(&format!(
        "INSERT INTO {table} ({}) VALUES ",
        columns.join(", ")
    ));
    sql.bind_list(values.into_iter().map(|(_, v)| v));
    sql
}

/// The incoming row's order key is at least the stored one's (row values compare
/// lexicographically in both dialects; ties go to the incoming row, so applying the same
/// event again is a no-op).
fn newer(table: &str, keys: &[&str]) -> String {
    let incoming: Vec<String> = keys.iter().map(|k| format!("excluded.{k}")).collect();
    let stored: Vec<String> = keys.iter().map(|k| format!("{table}.{k}")).collect();
    format!("(({}) >= ({}))", incoming.join(", "), stored.join(", "))
}

/// `c = newest of the two` for each column.
fn take_newer(table: &str, newer: &str, columns: &[&str]) -> Vec<String> {
    columns
        .iter()
        .map(|c| format!("{c} = CASE WHEN {newer} THEN excluded.{c} ELSE {table}.{c} END"))
        .collect()
}

/// `c = newest known of the two` (a value an event may leave out).
fn take_newer_known(table: &str, newer: &str, columns: &[&str]) -> Vec<String> {
    columns
        .iter()
        .map(|c| {
            format!(
                "{c} = CASE WHEN {newer} THEN COALESCE(excluded.{c}, {table}.{c}) \
                 ELSE COALESCE({table}.{c}, excluded.{c}) END"
            )
        })
        .collect()
}

/// Applies one record effect on the job's transaction.
pub(crate) async fn apply(
    conn: &mut impl WriteConn,
    effect: &RecordEffect,
) -> Result<(), sqlx::Error> {
    let sql = match effect {
        RecordEffect::Push(p) => push_sql(p),
        RecordEffect::Release(r) => release_sql(r),
        RecordEffect::CiRun(r) => ci_run_sql(r),
        RecordEffect::DeploymentStatus(d) => deployment_status_sql(d),
        RecordEffect::SocialEvent(s) => social_event_sql(s),
        RecordEffect::SocialCounts(c) => social_counts_sql(c),
    };
    conn.exec(&sql).await?;
    Ok(())
}

fn push_sql(p: &PushRecord) -> Sql<'_> {
    let mut sql = insert(
        "pushes",
        vec![
            ("event_id", p.event_id.into()),
            ("repository", p.repository.as_str().into()),
            ("ref_name", p.ref_name.as_str().into()),
            ("before_sha", p.before.as_str().into()),
            ("after_sha", p.after.as_str().into()),
            ("commits", p.commits.into()),
            ("distinct_commits", p.distinct_commits.into()),
            ("forced", flag(p.forced).into()),
            ("created", flag(p.created).into()),
            ("deleted", flag(p.deleted).into()),
            ("pusher", p.pusher.as_deref().into()),
            ("head_commit_at", p.head_commit_at.into()),
            ("received_at", p.received_at.into()),
        ],
    );
    sql.push(" ON CONFLICT (event_id) DO NOTHING");
    sql
}

fn release_sql(r: &ReleaseRecord) -> Sql<'_> {
    let mut sql = insert(
        "releases",
        vec![
            ("github_id", r.github_id.into()),
            ("repository", r.repository.as_str().into()),
            ("tag", r.tag.as_str().into()),
            ("name", r.name.as_deref().into()),
            ("draft", flag(r.draft).into()),
            ("prerelease", flag(r.prerelease).into()),
            ("deleted", flag(r.deleted).into()),
            ("last_action", r.last_action.as_str().into()),
            ("author", r.author.as_deref().into()),
            ("created_at", r.created_at.into()),
            ("published_at", r.published_at.into()),
            ("state_at", r.state_at.into()),
            ("last_event_id", r.last_event_id.into()),
        ],
    );
    let t = "releases";
    let newer = newer(t, &["state_at", "last_event_id"]);
    let mut sets = take_newer(
        t,
        &newer,
        &[
            "repository",
            "tag",
            "name",
            "draft",
            "prerelease",
            "state_at",
            "last_event_id",
        ],
    );
    sets.extend(take_newer_known(
        t,
        &newer,
        &["author", "created_at", "published_at"],
    ));
    sets.push(
        "deleted = CASE WHEN releases.deleted = 1 OR excluded.deleted = 1 THEN 1 ELSE 0 END"
            .to_owned(),
    );
    sets.push(format!(
        "last_action = CASE WHEN releases.deleted = 1 OR excluded.deleted = 1 THEN 'deleted' \
         WHEN {newer} THEN excluded.last_action ELSE releases.last_action END"
    ));
    sql.push(" ON CONFLICT (github_id) DO UPDATE SET ")
        .push(&sets.join(", "));
    sql
}

fn ci_run_sql(r: &CiRunRecord) -> Sql<'_> {
    let mut sql = insert(
        "ci_runs",
        vec![
            ("kind", r.kind.as_str().into()),
            ("github_id", r.github_id.into()),
            ("repository", r.repository.as_str().into()),
            ("name", r.name.as_str().into()),
            ("head_sha", r.head_sha.as_str().into()),
            ("head_branch", r.head_branch.as_deref().into()),
            ("status", r.status.as_str().into()),
            ("conclusion", r.conclusion.as_deref().into()),
            ("started_at", r.started_at.into()),
            ("completed_at", r.completed_at.into()),
            ("duration_ms", r.duration_ms.into()),
            ("run_attempt", r.run_attempt.into()),
            ("progress", r.progress.into()),
            ("state_at", r.state_at.into()),
            ("last_event_id", r.last_event_id.into()),
        ],
    );
    let t = "ci_runs";
    // A re-run (next attempt) starts over; within an attempt a state never goes back.
    let newer = newer(t, &["run_attempt", "progress", "state_at", "last_event_id"]);
    let mut sets = take_newer(
        t,
        &newer,
        &[
            "repository",
            "name",
            "head_sha",
            "status",
            "conclusion",
            "completed_at",
            "duration_ms",
            "run_attempt",
            "progress",
            "state_at",
            "last_event_id",
        ],
    );
    sets.extend(take_newer_known(t, &newer, &["head_branch", "started_at"]));
    sql.push(" ON CONFLICT (kind, github_id) DO UPDATE SET ")
        .push(&sets.join(", "));
    sql
}

fn deployment_status_sql(d: &DeploymentStatusRecord) -> Sql<'_> {
    let mut sql = insert(
        "deployment_statuses",
        vec![
            ("github_id", d.github_id.into()),
            ("deployment_id", d.deployment_id.into()),
            ("repository", d.repository.as_str().into()),
            ("environment", d.environment.as_str().into()),
            ("state", d.state.as_str().into()),
            ("sha", d.sha.as_deref().into()),
            ("ref_name", d.ref_name.as_deref().into()),
            ("creator", d.creator.as_deref().into()),
            ("created_at", d.created_at.into()),
            ("last_event_id", d.last_event_id.into()),
        ],
    );
    let t = "deployment_statuses";
    let newer = newer(t, &["created_at", "last_event_id"]);
    let mut sets = take_newer(
        t,
        &newer,
        &[
            "deployment_id",
            "repository",
            "environment",
            "state",
            "created_at",
            "last_event_id",
        ],
    );
    sets.extend(take_newer_known(t, &newer, &["sha", "ref_name", "creator"]));
    sql.push(" ON CONFLICT (github_id) DO UPDATE SET ")
        .push(&sets.join(", "));
    sql
}

fn social_event_sql(s: &SocialEventRecord) -> Sql<'_> {
    let mut sql = insert(
        "social_events",
        vec![
            ("event_id", s.event_id.into()),
            ("repository", s.repository.as_str().into()),
            ("kind", s.kind.as_str().into()),
            ("action", s.action.as_str().into()),
            ("user_login", s.user_login.as_str().into()),
            ("user_id", s.user_id.into()),
            ("fork", s.fork.as_deref().into()),
            ("at", s.at.into()),
        ],
    );
    sql.push(" ON CONFLICT (event_id) DO NOTHING");
    sql
}

fn social_counts_sql(c: &SocialCounts) -> Sql<'_> {
    let mut sql = insert(
        "repo_social",
        vec![
            ("repository", c.repository.as_str().into()),
            ("stars", c.stars.into()),
            ("forks", c.forks.into()),
            ("watchers", c.watchers.into()),
            ("reported_at", c.reported_at.into()),
            ("last_event_id", c.last_event_id.into()),
        ],
    );
    let t = "repo_social";
    let newer = newer(t, &["reported_at", "last_event_id"]);
    let sets = take_newer(
        t,
        &newer,
        &["stars", "forks", "watchers", "reported_at", "last_event_id"],
    );
    sql.push(" ON CONFLICT (repository) DO UPDATE SET ")
        .push(&sets.join(", "));
    sql
}

/// Which records to read: newest first, optionally of one repository, below a cursor.
#[derive(Debug, Clone)]
pub struct RecordFilter {
    pub repository: Option<String>,
    /// Only rows with an id below this (the previous page's last id).
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// A stored record with its row id (the cursor of the API's pages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordRow<T> {
    pub id: i64,
    #[serde(flatten)]
    pub record: T,
}

fn is(r: &AnyRow, col: &str) -> Result<bool, sqlx::Error> {
    Ok(r.try_get::<i64, _>(col)? != 0)
}

fn push_row(r: &AnyRow) -> Result<PushRecord, sqlx::Error> {
    Ok(PushRecord {
        event_id: r.try_get("event_id")?,
        repository: r.try_get("repository")?,
        ref_name: r.try_get("ref_name")?,
        before: r.try_get("before_sha")?,
        after: r.try_get("after_sha")?,
        commits: r.try_get("commits")?,
        distinct_commits: r.try_get("distinct_commits")?,
        forced: is(r, "forced")?,
        created: is(r, "created")?,
        deleted: is(r, "deleted")?,
        pusher: opt_text(r, "pusher")?,
        head_commit_at: r.try_get("head_commit_at")?,
        received_at: r.try_get("received_at")?,
    })
}

fn release_row(r: &AnyRow) -> Result<ReleaseRecord, sqlx::Error> {
    Ok(ReleaseRecord {
        github_id: r.try_get("github_id")?,
        repository: r.try_get("repository")?,
        tag: r.try_get("tag")?,
        name: opt_text(r, "name")?,
        draft: is(r, "draft")?,
        prerelease: is(r, "prerelease")?,
        deleted: is(r, "deleted")?,
        last_action: r.try_get("last_action")?,
        author: opt_text(r, "author")?,
        created_at: r.try_get("created_at")?,
        published_at: r.try_get("published_at")?,
        state_at: r.try_get("state_at")?,
        last_event_id: r.try_get("last_event_id")?,
    })
}

fn ci_run_row(r: &AnyRow) -> Result<CiRunRecord, sqlx::Error> {
    Ok(CiRunRecord {
        kind: r.try_get("kind")?,
        github_id: r.try_get("github_id")?,
        repository: r.try_get("repository")?,
        name: r.try_get("name")?,
        head_sha: r.try_get("head_sha")?,
        head_branch: opt_text(r, "head_branch")?,
        status: r.try_get("status")?,
        conclusion: opt_text(r, "conclusion")?,
        started_at: r.try_get("started_at")?,
        completed_at: r.try_get("completed_at")?,
        duration_ms: r.try_get("duration_ms")?,
        run_attempt: r.try_get("run_attempt")?,
        progress: r.try_get("progress")?,
        state_at: r.try_get("state_at")?,
        last_event_id: r.try_get("last_event_id")?,
    })
}

fn deployment_status_row(r: &AnyRow) -> Result<DeploymentStatusRecord, sqlx::Error> {
    Ok(DeploymentStatusRecord {
        github_id: r.try_get("github_id")?,
        deployment_id: r.try_get("deployment_id")?,
        repository: r.try_get("repository")?,
        environment: r.try_get("environment")?,
        state: r.try_get("state")?,
        sha: opt_text(r, "sha")?,
        ref_name: opt_text(r, "ref_name")?,
        creator: opt_text(r, "creator")?,
        created_at: r.try_get("created_at")?,
        last_event_id: r.try_get("last_event_id")?,
    })
}

fn social_event_row(r: &AnyRow) -> Result<SocialEventRecord, sqlx::Error> {
    Ok(SocialEventRecord {
        event_id: r.try_get("event_id")?,
        repository: r.try_get("repository")?,
        kind: r.try_get("kind")?,
        action: r.try_get("action")?,
        user_login: r.try_get("user_login")?,
        user_id: r.try_get("user_id")?,
        fork: opt_text(r, "fork")?,
        at: r.try_get("at")?,
    })
}

fn social_counts_row(r: &AnyRow) -> Result<SocialCounts, sqlx::Error> {
    Ok(SocialCounts {
        repository: r.try_get("repository")?,
        stars: r.try_get("stars")?,
        forks: r.try_get("forks")?,
        watchers: r.try_get("watchers")?,
        reported_at: r.try_get("reported_at")?,
        last_event_id: r.try_get("last_event_id")?,
    })
}

impl Store {
    /// A page of `table`, newest row first.
    async fn record_page<T>(
        &self,
        table: &str,
        filter: &RecordFilter,
        read: fn(&AnyRow) -> Result<T, sqlx::Error>,
    ) -> Result<Vec<RecordRow<T>>, StoreError> {
        let mut sql = Sql::new(&format!("SELECT * FROM {table} WHERE 1 = 1"));
        if let Some(repo) = &filter.repository {
            sql.push(" AND repository = ").bind(repo.as_str());
        }
        if let Some(before) = filter.before_id {
            sql.push(" AND id < ").bind(before);
        }
        sql.push(" ORDER BY id DESC LIMIT ")
            .bind(i64::from(filter.limit));
        Ok(sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| {
                Ok(RecordRow {
                    id: r.try_get("id")?,
                    record: read(r)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }

    pub async fn pushes(
        &self,
        filter: &RecordFilter,
    ) -> Result<Vec<RecordRow<PushRecord>>, StoreError> {
        self.record_page("pushes", filter, push_row).await
    }

    pub async fn releases(
        &self,
        filter: &RecordFilter,
    ) -> Result<Vec<RecordRow<ReleaseRecord>>, StoreError> {
        self.record_page("releases", filter, release_row).await
    }

    pub async fn ci_runs(
        &self,
        filter: &RecordFilter,
    ) -> Result<Vec<RecordRow<CiRunRecord>>, StoreError> {
        self.record_page("ci_runs", filter, ci_run_row).await
    }

    pub async fn deployment_statuses(
        &self,
        filter: &RecordFilter,
    ) -> Result<Vec<RecordRow<DeploymentStatusRecord>>, StoreError> {
        self.record_page("deployment_statuses", filter, deployment_status_row)
            .await
    }

    pub async fn social_events(
        &self,
        filter: &RecordFilter,
    ) -> Result<Vec<RecordRow<SocialEventRecord>>, StoreError> {
        self.record_page("social_events", filter, social_event_row)
            .await
    }

    /// Last reported counts, of one repository or all, by repository.
    pub async fn social_counts(
        &self,
        repository: Option<&str>,
    ) -> Result<Vec<SocialCounts>, StoreError> {
        let mut sql = Sql::new("SELECT * FROM repo_social");
        if let Some(repo) = repository {
            sql.push(" WHERE repository = ").bind(repo);
        }
        sql.push(" ORDER BY repository");
        Ok(sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(social_counts_row)
            .collect::<Result<_, sqlx::Error>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_compares_the_order_key_as_a_row_value() {
        assert_eq!(
            newer("t", &["a", "b"]),
            "((excluded.a, excluded.b) >= (t.a, t.b))"
        );
    }

    #[test]
    fn progress_never_goes_back() {
        assert!(CiRunRecord::progress_of("completed") > CiRunRecord::progress_of("in_progress"));
        assert!(CiRunRecord::progress_of("in_progress") > CiRunRecord::progress_of("queued"));
        assert_eq!(CiRunRecord::progress_of("requested"), 0);
    }
}
