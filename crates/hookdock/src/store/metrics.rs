//! SQL for pull request metrics: members, pull requests, reviews, review activity, draft
//! changes and first commits.
//!
//! Writes arrive as [`Effect`](super::Effect)s from the metrics handlers and run inside the
//! transaction that finishes their job. Every write is an order-independent merge: state columns
//! follow GitHub's newest `updated_at`, size columns the newest event that carried them, a
//! pull request's commits the newest answer hookdock read, times that only move one way take
//! the minimum, and derived columns (first review, first commit, draft intervals, revert links,
//! the reverted flag, review comment counts) are recomputed from the stored rows after each
//! write. So any order of a pull request's events and API answers leaves the same rows. This
//! module computes no metric; that is [`crate::metrics`].

use std::sync::LazyLock;

use serde_json::Value;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{Sql, WriteConn};
use super::{Store, StoreError, opt_text};

/// A GitHub user seen in an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub github_id: i64,
    pub login: String,
    pub name: Option<String>,
    pub is_bot: bool,
    /// GitHub time of the event that named the user (Unix ms).
    pub seen_at: i64,
}

/// Size of a pull request; only full `pull_request` payloads carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullRequestSize {
    pub additions: i64,
    pub deletions: i64,
    pub changed_files: i64,
    pub commits: i64,
}

/// A pull request as one event describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestRecord {
    pub repo: String,
    pub number: i64,
    pub github_id: i64,
    pub author_id: Option<i64>,
    pub title: String,
    /// `open`, `closed` or `merged`.
    pub state: &'static str,
    pub draft: bool,
    pub base_ref: Option<String>,
    pub head_ref: Option<String>,
    pub head_sha: Option<String>,
    pub merge_commit_sha: Option<String>,
    pub created_at: i64,
    /// Set by a `ready_for_review` event: its time.
    pub ready_for_review_at: Option<i64>,
    /// Set by `opened` (as a draft), `converted_to_draft` and `ready_for_review` events: when,
    /// and whether the pull request became a draft (else it was marked ready).
    pub draft_change: Option<(i64, bool)>,
    pub merged_at: Option<i64>,
    pub closed_at: Option<i64>,
    /// `None` for the reduced `pull_request` object of review and comment payloads.
    pub size: Option<PullRequestSize>,
    pub is_revert: bool,
    pub reverts_sha: Option<String>,
    pub reverts_number: Option<i64>,
    pub is_hotfix: bool,
    /// JSON array of label names, sorted.
    pub labels: String,
    /// GitHub's `updated_at` (Unix ms): newer state wins.
    pub updated_at: i64,
}

/// A submitted review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRecord {
    pub github_id: i64,
    pub repo: String,
    pub pr_number: i64,
    pub reviewer_id: i64,
    /// Lowercase: `approved`, `changes_requested`, `commented`, `dismissed`.
    pub state: String,
    pub submitted_at: i64,
}

/// What kind of activity on a pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    Review,
    ReviewComment,
    IssueComment,
}

impl ActivityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityKind::Review => "review",
            ActivityKind::ReviewComment => "review_comment",
            ActivityKind::IssueComment => "issue_comment",
        }
    }
}

/// A review, review comment or issue comment on a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrActivityRecord {
    pub kind: ActivityKind,
    /// The review's or comment's GitHub id.
    pub source_id: i64,
    pub repo: String,
    pub pr_number: i64,
    pub actor_id: i64,
    /// For review comments: the review they belong to.
    pub review_id: Option<i64>,
    pub at: i64,
    /// Counts towards the first review (not by the author; bots only when configured).
    pub counts: bool,
    pub deleted: bool,
}

/// The first commit of a pull request, from one answer of GitHub's commits API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrCommitsRecord {
    pub repo: String,
    pub pr_number: i64,
    /// When hookdock read the answer (Unix ms): a newer answer replaces an older one.
    pub as_of: i64,
    /// The earliest `commit.author.date` of the commits listed; `None` when none were.
    pub first_commit_at: Option<i64>,
    pub first_commit_sha: Option<String>,
    /// Commits listed (GitHub lists at most 250).
    pub commits: i64,
}

/// Changes of a pull request's draft state: `(when, became a draft)`; `false` is "marked
/// ready for review". From webhooks one at a time, from a backfill all the issue events say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftChangesRecord {
    pub repo: String,
    pub pr_number: i64,
    pub changes: Vec<(i64, bool)>,
}

/// `min(a, b)` where NULL means "unknown", in SQL both dialects accept.
fn min_known(a: &str, b: &str) -> String {
    format!("CASE WHEN {a} IS NULL THEN {b} WHEN {b} IS NULL OR {a} <= {b} THEN {a} ELSE {b} END")
}

fn max_known(a: &str, b: &str) -> String {
    format!("CASE WHEN {a} IS NULL THEN {b} WHEN {b} IS NULL OR {a} >= {b} THEN {a} ELSE {b} END")
}

fn flag(v: bool) -> i64 {
    i64::from(v)
}

/// The `SET` list of `merges` (column, its merged value) and a condition on `table`'s row that
/// holds only where one of them changes the stored value. An UPDATE rewrites the index entries
/// of every column it sets, even to the same value (SQLite writes a page of each such index),
/// so merges of indexed columns are applied only under that condition.
fn set_where_changed(table: &str, merges: &[(&str, String)]) -> (String, String) {
    let sets: Vec<String> = merges.iter().map(|(c, v)| format!("{c} = {v}")).collect();
    let changes: Vec<String> = merges
        .iter()
        .map(|(c, v)| format!("{table}.{c} IS DISTINCT FROM ({v})"))
        .collect();
    (sets.join(", "), format!("({})", changes.join(" OR ")))
}

/// Takes the login of `m` for a stored member if it is at least as new as the stored one,
/// and changes the row only if the login changes: setting it in the upsert would rewrite its
/// index entry every time (see [`INDEXED_UPDATE`]). Runs before the upsert moves `updated`.
/// Returns the rows changed.
async fn update_login(conn: &mut impl WriteConn, m: &MemberRecord) -> Result<u64, sqlx::Error> {
    let mut sql = Sql::new("UPDATE members SET login = n.login FROM (SELECT ");
    sql.bind(m.login.as_str()).push(" AS login, ");
    sql.bind(m.seen_at)
        .push(" AS updated) AS n WHERE members.github_id = ");
    sql.bind(m.github_id)
        .push(" AND n.updated >= members.updated AND members.login IS DISTINCT FROM n.login");
    conn.exec(&sql).await
}

pub(crate) async fn upsert_member(
    conn: &mut impl WriteConn,
    m: &MemberRecord,
) -> Result<(), sqlx::Error> {
    update_login(conn, m).await?;
    let mut sql = Sql::new(
        "INSERT INTO members (github_id, login, name, is_bot, first_seen, updated) VALUES (",
    );
    sql.bind(m.github_id).push(", ").bind(m.login.as_str());
    sql.push(", ").bind(m.name.as_deref()).push(", ");
    sql.bind(flag(m.is_bot)).push(", ").bind(m.seen_at);
    sql.push(", ").bind(m.seen_at).push(")");
    sql.push(&MEMBER_CONFLICT);
    conn.exec(&sql).await?;
    // Every login a user was seen with: team members configured by login stay matched by id
    // after a rename.
    let mut sql = Sql::new("INSERT INTO member_logins (login_lower, github_id, seen) VALUES (");
    sql.bind(m.login.to_lowercase())
        .push(", ")
        .bind(m.github_id)
        .push(", ")
        .bind(m.seen_at)
        .push(&MEMBER_LOGIN_CONFLICT);
    conn.exec(&sql).await?;
    Ok(())
}

/// What inserting a stored member does (its login is [`update_login`]'s).
static MEMBER_CONFLICT: LazyLock<String> = LazyLock::new(|| {
    format!(
        " ON CONFLICT (github_id) DO UPDATE SET \
         name = CASE WHEN excluded.name IS NOT NULL AND (members.name IS NULL OR excluded.updated >= members.updated) \
             THEN excluded.name ELSE members.name END, \
         is_bot = CASE WHEN excluded.is_bot = 1 OR members.is_bot = 1 THEN 1 ELSE 0 END, \
         first_seen = {}, updated = {}",
        min_known("members.first_seen", "excluded.first_seen"),
        max_known("members.updated", "excluded.updated"),
    )
});

/// What inserting a login a member was already seen with does.
static MEMBER_LOGIN_CONFLICT: LazyLock<String> = LazyLock::new(|| {
    format!(
        ") ON CONFLICT (login_lower, github_id) DO UPDATE SET seen = {}",
        max_known("member_logins.seen", "excluded.seen")
    )
});

/// How an event's value of a pull request column merges into the stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    /// The earliest known value (a time or an id that only moves back).
    Earliest,
    /// The first known value, never replaced.
    First,
    /// The state of the event with the newest GitHub `updated_at`.
    Newest,
    /// From the newest event that carried the pull request's size.
    NewestSize,
}

/// Every column an event sets on a stored pull request: how it merges, and whether an index
/// covers it (or a partial index's condition reads it).
const MERGED_COLUMNS: &[(&str, Merge, bool)] = &[
    ("github_id", Merge::Earliest, true),
    ("author_id", Merge::First, true),
    ("created_at", Merge::Earliest, true),
    ("ready_for_review_at", Merge::Earliest, false),
    ("title", Merge::Newest, false),
    ("state", Merge::Newest, false),
    ("draft", Merge::Newest, false),
    ("base_ref", Merge::Newest, false),
    ("head_ref", Merge::Newest, false),
    ("head_sha", Merge::Newest, true),
    ("merge_commit_sha", Merge::Newest, true),
    ("merged_at", Merge::Newest, true),
    ("closed_at", Merge::Newest, true),
    ("is_revert", Merge::Newest, true),
    ("reverts_sha", Merge::Newest, true),
    ("reverts_number", Merge::Newest, true),
    ("is_hotfix", Merge::Newest, false),
    ("labels", Merge::Newest, false),
    ("updated_at", Merge::Newest, false),
    ("additions", Merge::NewestSize, false),
    ("deletions", Merge::NewestSize, false),
    ("changed_files", Merge::NewestSize, false),
    ("commits", Merge::NewestSize, false),
    ("size_updated_at", Merge::NewestSize, false),
];

/// The stored value of `column` once the event's row `new` (a table alias) is merged in.
fn merged(column: &str, merge: Merge, new: &str) -> String {
    let old = format!("pull_requests.{column}");
    let theirs = format!("{new}.{column}");
    match merge {
        Merge::Earliest => min_known(&old, &theirs),
        Merge::First => format!("COALESCE({old}, {theirs})"),
        // Equal times: a full payload beats the reduced one of a review, so both orders agree.
        Merge::Newest => format!(
            "CASE WHEN ({new}.updated_at > pull_requests.updated_at OR \
             ({new}.updated_at = pull_requests.updated_at AND {new}.size_updated_at IS NOT NULL \
             AND pull_requests.size_updated_at IS NULL)) THEN {theirs} ELSE {old} END"
        ),
        Merge::NewestSize => format!(
            "CASE WHEN ({new}.size_updated_at IS NOT NULL AND (pull_requests.size_updated_at IS NULL \
             OR {new}.size_updated_at > pull_requests.size_updated_at)) THEN {theirs} ELSE {old} END"
        ),
    }
}

/// What the upsert of a pull request does to an existing row: merges every column no index
/// covers (the indexed ones are [`INDEXED_UPDATE`]'s).
static UPSERT_CONFLICT: LazyLock<String> = LazyLock::new(|| {
    let sets: Vec<String> = MERGED_COLUMNS
        .iter()
        .filter(|(_, _, indexed)| !indexed)
        .map(|&(c, merge, _)| format!("{c} = {}", merged(c, merge, "excluded")))
        .collect();
    // NULL draft intervals: never computed for this row (it is new, or older than them), so
    // draft changes stored before the pull request (a backfill's) are picked up now.
    format!(
        " ON CONFLICT (repo, number) DO UPDATE SET {} RETURNING draft_intervals",
        sets.join(", ")
    )
});

/// Merges the indexed columns of a stored pull request, and changes the row only if one of
/// them changes (see [`set_where_changed`]): most events of a pull request (comments,
/// reviews, labels, edits) change none of these columns. The event's row `n` and the pull
/// request follow (see [`update_indexed_columns`]).
static INDEXED_UPDATE: LazyLock<(String, String)> = LazyLock::new(|| {
    let merges: Vec<(&str, String)> = MERGED_COLUMNS
        .iter()
        .filter(|(_, _, indexed)| *indexed)
        .map(|&(c, merge, _)| (c, merged(c, merge, "n")))
        .collect();
    let (sets, changed) = set_where_changed("pull_requests", &merges);
    (
        format!("UPDATE pull_requests SET {sets} FROM (SELECT "),
        format!(" AND {changed}"),
    )
});

/// Runs before the upsert, whose update would move the row's `updated_at` that
/// [`Merge::Newest`] compares with. Does nothing to a pull request not stored yet. Returns
/// the rows changed.
async fn update_indexed_columns(
    conn: &mut impl WriteConn,
    pr: &PullRequestRecord,
) -> Result<u64, sqlx::Error> {
    let (head, changes) = &*INDEXED_UPDATE;
    let mut sql = Sql::new(head);
    sql.bind(pr.github_id).push(" AS github_id, ");
    sql.bind(pr.author_id).push(" AS author_id, ");
    sql.bind(pr.created_at).push(" AS created_at, ");
    sql.bind(pr.head_sha.as_deref()).push(" AS head_sha, ");
    sql.bind(pr.merge_commit_sha.as_deref())
        .push(" AS merge_commit_sha, ");
    sql.bind(pr.merged_at).push(" AS merged_at, ");
    sql.bind(pr.closed_at).push(" AS closed_at, ");
    sql.bind(flag(pr.is_revert)).push(" AS is_revert, ");
    sql.bind(pr.reverts_sha.as_deref())
        .push(" AS reverts_sha, ");
    sql.bind(pr.reverts_number).push(" AS reverts_number, ");
    sql.bind(pr.updated_at).push(" AS updated_at, ");
    sql.bind(pr.size.map(|_| pr.updated_at))
        .push(" AS size_updated_at) AS n WHERE pull_requests.repo = ");
    sql.bind(pr.repo.as_str())
        .push(" AND pull_requests.number = ")
        .bind(pr.number);
    sql.push(changes);
    conn.exec(&sql).await
}

pub(crate) async fn upsert_pull_request(
    conn: &mut impl WriteConn,
    pr: &PullRequestRecord,
) -> Result<(), sqlx::Error> {
    update_indexed_columns(conn, pr).await?;
    let mut sql = Sql::new(
        "INSERT INTO pull_requests (repo, number, github_id, author_id, title, state, draft, \
         base_ref, head_ref, head_sha, merge_commit_sha, created_at, ready_for_review_at, \
         merged_at, closed_at, additions, deletions, changed_files, commits, is_revert, \
         reverts_sha, reverts_number, is_hotfix, labels, updated_at, size_updated_at) VALUES (",
    );
    sql.bind(pr.repo.as_str()).push(", ").bind(pr.number);
    sql.push(", ")
        .bind(pr.github_id)
        .push(", ")
        .bind(pr.author_id);
    sql.push(", ")
        .bind(pr.title.as_str())
        .push(", ")
        .bind(pr.state);
    sql.push(", ").bind(flag(pr.draft)).push(", ");
    sql.bind(pr.base_ref.as_deref())
        .push(", ")
        .bind(pr.head_ref.as_deref());
    sql.push(", ").bind(pr.head_sha.as_deref()).push(", ");
    sql.bind(pr.merge_commit_sha.as_deref())
        .push(", ")
        .bind(pr.created_at);
    sql.push(", ").bind(pr.ready_for_review_at).push(", ");
    sql.bind(pr.merged_at).push(", ").bind(pr.closed_at);
    let size = pr.size;
    sql.push(", ").bind(size.map(|s| s.additions));
    sql.push(", ").bind(size.map(|s| s.deletions));
    sql.push(", ").bind(size.map(|s| s.changed_files));
    sql.push(", ").bind(size.map(|s| s.commits));
    sql.push(", ").bind(flag(pr.is_revert)).push(", ");
    sql.bind(pr.reverts_sha.as_deref())
        .push(", ")
        .bind(pr.reverts_number);
    sql.push(", ").bind(flag(pr.is_hotfix)).push(", ");
    sql.bind(pr.labels.as_str())
        .push(", ")
        .bind(pr.updated_at)
        .push(", ");
    sql.bind(size.map(|_| pr.updated_at)).push(")");
    sql.push(&UPSERT_CONFLICT);
    let intervals = match conn.row(&sql).await? {
        Some(row) => row.try_get::<Option<String>, _>(0)?,
        None => None,
    };
    let changes: Vec<(i64, bool)> = pr.draft_change.into_iter().collect();
    if !changes.is_empty() || intervals.is_none() {
        record_draft_changes(conn, &pr.repo, pr.number, &changes).await?;
    }
    refresh_pull_request(conn, &pr.repo, pr.number).await
}

/// Stores changes of a pull request's draft state and recomputes its draft intervals and
/// first ready-for-review time from all of them, so the order changes arrive in (and whether
/// from webhooks or issue events) does not matter. A missing pull request row is left to its
/// own upsert, which calls this again.
async fn record_draft_changes(
    conn: &mut impl WriteConn,
    repo: &str,
    number: i64,
    new: &[(i64, bool)],
) -> Result<(), sqlx::Error> {
    if !new.is_empty() {
        let mut sql = Sql::new("INSERT INTO pr_draft_changes (repo, pr_number, at, draft) VALUES ");
        for (i, (at, draft)) in new.iter().enumerate() {
            sql.push(if i == 0 { "(" } else { ", (" });
            sql.bind(repo).push(", ").bind(number).push(", ").bind(*at);
            sql.push(", ").bind(flag(*draft)).push(")");
        }
        sql.push(" ON CONFLICT (repo, pr_number, at, draft) DO NOTHING");
        conn.exec(&sql).await?;
    }
    let mut sql = Sql::new("SELECT at, draft FROM pr_draft_changes WHERE repo = ");
    sql.bind(repo)
        .push(" AND pr_number = ")
        .bind(number)
        .push(" ORDER BY at, draft");
    let changes = conn
        .rows(&sql)
        .await?
        .iter()
        .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)? != 0)))
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let text = draft_intervals_text(&changes);
    let first_ready = changes.iter().find(|(_, draft)| !draft).map(|(at, _)| *at);
    let mut sql = Sql::new("UPDATE pull_requests SET draft_intervals = ");
    sql.bind(text);
    if let Some(ready) = first_ready {
        sql.push(", ready_for_review_at = CASE WHEN ready_for_review_at IS NULL OR ready_for_review_at > ")
            .bind(ready)
            .push(" THEN ")
            .bind(ready)
            .push(" ELSE ready_for_review_at END");
    }
    sql.push(" WHERE repo = ")
        .bind(repo)
        .push(" AND number = ")
        .bind(number);
    conn.exec(&sql).await?;
    Ok(())
}

/// Draft intervals from time-ordered changes: a draft begins at the first `true` after being
/// ready and ends at the next `false`. As `start-end` pairs joined by commas; an interval
/// still open has no end (`start-`).
pub fn draft_intervals_text(changes: &[(i64, bool)]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut open: Option<i64> = None;
    for &(at, draft) in changes {
        match (draft, open) {
            (true, None) => open = Some(at),
            (false, Some(start)) => {
                out.push(format!("{start}-{at}"));
                open = None;
            }
            _ => {}
        }
    }
    if let Some(start) = open {
        out.push(format!("{start}-"));
    }
    out.join(",")
}

/// The intervals of [`draft_intervals_text`]; `None` for an end still open.
pub fn parse_draft_intervals(text: &str) -> Result<Vec<(i64, Option<i64>)>, String> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (start, end) = part
                .split_once('-')
                .ok_or_else(|| format!("{part:?} is not start-end"))?;
            let start = start.parse::<i64>().map_err(|e| format!("{part:?}: {e}"))?;
            let end = if end.is_empty() {
                None
            } else {
                Some(end.parse::<i64>().map_err(|e| format!("{part:?}: {e}"))?)
            };
            Ok((start, end))
        })
        .collect()
}

/// Recomputes what is derived from other rows: the first review, revert links by commit, and
/// the reverted flags of the repository's pull requests.
async fn refresh_pull_request(
    conn: &mut impl WriteConn,
    repo: &str,
    number: i64,
) -> Result<(), sqlx::Error> {
    refresh_first_times(conn, repo, number).await?;

    let mut sql = Sql::new(
        "UPDATE pull_requests SET reverts_number = (SELECT t.number FROM pull_requests t \
         WHERE t.repo = pull_requests.repo AND t.number <> pull_requests.number \
         AND (t.merge_commit_sha = pull_requests.reverts_sha OR t.head_sha = pull_requests.reverts_sha) \
         ORDER BY t.number LIMIT 1) \
         WHERE repo = ",
    );
    sql.bind(repo)
        .push(" AND is_revert = 1 AND reverts_number IS NULL AND reverts_sha IS NOT NULL");
    conn.exec(&sql).await?;

    // `reverted` holds exactly for the numbers a merged revert of the repository names. The
    // target list is uncorrelated so both statements look rows up by (repo, number) or the
    // partial index on reverted rows instead of walking the repository.
    let targets = |sql: &mut Sql<'_>| {
        sql.push("(SELECT r.reverts_number FROM pull_requests r WHERE r.repo = ")
            .bind(repo.to_owned())
            .push(" AND r.is_revert = 1 AND r.state = 'merged' AND r.reverts_number IS NOT NULL)");
    };
    let mut sql = Sql::new("UPDATE pull_requests SET reverted = 1 WHERE repo = ");
    sql.bind(repo).push(" AND reverted = 0 AND number IN ");
    targets(&mut sql);
    conn.exec(&sql).await?;
    let mut sql = Sql::new("UPDATE pull_requests SET reverted = 0 WHERE repo = ");
    sql.bind(repo).push(" AND reverted = 1 AND number NOT IN ");
    targets(&mut sql);
    conn.exec(&sql).await?;
    Ok(())
}

/// Recomputes the first review (the earliest counted activity) and copies the first commit
/// (of the newest commits answer) into the pull request's row, in one statement.
async fn refresh_first_times(
    conn: &mut impl WriteConn,
    repo: &str,
    number: i64,
) -> Result<(), sqlx::Error> {
    let mut sql = Sql::new(
        "UPDATE pull_requests SET first_review_at = (SELECT MIN(a.at) FROM pr_activity a \
         WHERE a.repo = pull_requests.repo AND a.pr_number = pull_requests.number AND a.counts = 1), \
         first_commit_at = (SELECT c.first_commit_at FROM pr_first_commits c \
         WHERE c.repo = pull_requests.repo AND c.pr_number = pull_requests.number) \
         WHERE repo = ",
    );
    sql.bind(repo).push(" AND number = ").bind(number);
    conn.exec(&sql).await?;
    Ok(())
}

async fn refresh_review_comments(
    conn: &mut impl WriteConn,
    review_id: i64,
) -> Result<(), sqlx::Error> {
    let mut sql = Sql::new(
        "UPDATE reviews SET comment_count = (SELECT COUNT(*) FROM pr_activity a \
         WHERE a.review_id = reviews.github_id AND a.kind = 'review_comment' AND a.deleted = 0) \
         WHERE github_id = ",
    );
    sql.bind(review_id);
    conn.exec(&sql).await?;
    Ok(())
}

pub(crate) async fn upsert_review(
    conn: &mut impl WriteConn,
    r: &ReviewRecord,
) -> Result<(), sqlx::Error> {
    merge_review(conn, r).await?;
    refresh_review_comments(conn, r.github_id).await
}

/// Inserts a review or merges it into the stored one; returns the rows changed. A repeated
/// event (an edit, a redelivery, a backfill run again) changes nothing and writes nothing:
/// setting `submitted_at` even to its value would rewrite its index entry.
async fn merge_review(conn: &mut impl WriteConn, r: &ReviewRecord) -> Result<u64, sqlx::Error> {
    let mut sql = Sql::new(
        "INSERT INTO reviews (github_id, repo, pr_number, reviewer_id, state, submitted_at) VALUES (",
    );
    sql.bind(r.github_id).push(", ").bind(r.repo.as_str());
    sql.push(", ")
        .bind(r.pr_number)
        .push(", ")
        .bind(r.reviewer_id);
    sql.push(", ").bind(r.state.as_str()).push(", ");
    sql.bind(r.submitted_at).push(")");
    sql.push(&REVIEW_CONFLICT);
    conn.exec(&sql).await
}

/// What inserting a stored review does: merges it, only where a value changes.
static REVIEW_CONFLICT: LazyLock<String> = LazyLock::new(|| {
    // A dismissal is final, whatever order submitted/edited/dismissed arrive in.
    let state = "CASE WHEN reviews.state = 'dismissed' OR excluded.state = 'dismissed' \
        THEN 'dismissed' ELSE excluded.state END";
    let (sets, changed) = set_where_changed(
        "reviews",
        &[
            ("state", state.to_owned()),
            (
                "submitted_at",
                min_known("reviews.submitted_at", "excluded.submitted_at"),
            ),
        ],
    );
    format!(" ON CONFLICT (github_id) DO UPDATE SET {sets} WHERE {changed}")
});

/// Applies a [`DraftChangesRecord`].
pub(crate) async fn draft_changes(
    conn: &mut impl WriteConn,
    d: &DraftChangesRecord,
) -> Result<(), sqlx::Error> {
    record_draft_changes(conn, &d.repo, d.pr_number, &d.changes).await
}

/// Keeps what one answer of GitHub's commits API says of a pull request, unless a newer answer
/// is kept (equal times: the earlier first commit, so both orders agree), and copies the first
/// commit into the pull request's row if it exists (else its upsert will).
pub(crate) async fn record_pr_commits(
    conn: &mut impl WriteConn,
    c: &PrCommitsRecord,
) -> Result<(), sqlx::Error> {
    let mut sql = Sql::new(
        "INSERT INTO pr_first_commits (repo, pr_number, as_of, first_commit_at, \
         first_commit_sha, commits) VALUES (",
    );
    sql.bind(c.repo.as_str()).push(", ").bind(c.pr_number);
    sql.push(", ")
        .bind(c.as_of)
        .push(", ")
        .bind(c.first_commit_at);
    sql.push(", ")
        .bind(c.first_commit_sha.as_deref())
        .push(", ")
        .bind(c.commits)
        .push(")");
    sql.push(
        " ON CONFLICT (repo, pr_number) DO UPDATE SET as_of = excluded.as_of, \
         first_commit_at = excluded.first_commit_at, first_commit_sha = excluded.first_commit_sha, \
         commits = excluded.commits \
         WHERE excluded.as_of > pr_first_commits.as_of OR (excluded.as_of = pr_first_commits.as_of \
         AND excluded.first_commit_at < pr_first_commits.first_commit_at)",
    );
    conn.exec(&sql).await?;
    refresh_first_times(conn, &c.repo, c.pr_number).await
}

pub(crate) async fn record_pr_activity(
    conn: &mut impl WriteConn,
    a: &PrActivityRecord,
) -> Result<(), sqlx::Error> {
    merge_pr_activity(conn, a).await?;
    refresh_first_times(conn, &a.repo, a.pr_number).await?;
    if let Some(review_id) = a.review_id {
        refresh_review_comments(conn, review_id).await?;
    }
    Ok(())
}

/// Inserts a review activity or merges it into the stored one; returns the rows changed. A
/// repeated one changes nothing and writes nothing (its `at` and `review_id` are indexed).
async fn merge_pr_activity(
    conn: &mut impl WriteConn,
    a: &PrActivityRecord,
) -> Result<u64, sqlx::Error> {
    let mut sql = Sql::new(
        "INSERT INTO pr_activity (kind, source_id, repo, pr_number, actor_id, review_id, at, \
         counts, deleted) VALUES (",
    );
    sql.bind(a.kind.as_str()).push(", ").bind(a.source_id);
    sql.push(", ")
        .bind(a.repo.as_str())
        .push(", ")
        .bind(a.pr_number);
    sql.push(", ").bind(a.actor_id).push(", ").bind(a.review_id);
    sql.push(", ").bind(a.at).push(", ").bind(flag(a.counts));
    sql.push(", ").bind(flag(a.deleted)).push(")");
    sql.push(&ACTIVITY_CONFLICT);
    conn.exec(&sql).await
}

/// What inserting a stored review activity does: merges it, only where a value changes.
static ACTIVITY_CONFLICT: LazyLock<String> = LazyLock::new(|| {
    // A deletion is final; the time is the earliest seen.
    let (sets, changed) = set_where_changed(
        "pr_activity",
        &[
            (
                "deleted",
                "CASE WHEN pr_activity.deleted = 1 OR excluded.deleted = 1 THEN 1 ELSE 0 END"
                    .to_owned(),
            ),
            (
                "review_id",
                "COALESCE(pr_activity.review_id, excluded.review_id)".to_owned(),
            ),
            ("at", min_known("pr_activity.at", "excluded.at")),
        ],
    );
    format!(" ON CONFLICT (kind, source_id) DO UPDATE SET {sets} WHERE {changed}")
});

/// Which pull requests to read.
#[derive(Debug, Clone, Default)]
pub struct PullFilter {
    pub repo: Option<String>,
    /// Author login, compared case-insensitively.
    pub author: Option<String>,
    /// Only these authors (GitHub user ids); an empty list matches nothing.
    pub author_ids: Option<Vec<i64>>,
    /// Created at or after (Unix ms).
    pub created_from: Option<i64>,
    /// Created before (Unix ms).
    pub created_to: Option<i64>,
    /// Also include pull requests merged or closed in [from, to), for summaries.
    pub ended_from: Option<i64>,
    pub ended_to: Option<i64>,
}

/// A stored pull request with its author and review count, as the metrics read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestRow {
    pub repo: String,
    pub number: i64,
    pub github_id: i64,
    pub title: String,
    pub author: Option<String>,
    pub author_id: Option<i64>,
    pub author_is_bot: bool,
    pub state: String,
    pub draft: bool,
    pub base_ref: Option<String>,
    pub head_ref: Option<String>,
    pub head_sha: Option<String>,
    pub merge_commit_sha: Option<String>,
    pub created_at: i64,
    pub ready_for_review_at: Option<i64>,
    pub first_commit_at: Option<i64>,
    pub first_review_at: Option<i64>,
    pub merged_at: Option<i64>,
    pub closed_at: Option<i64>,
    pub additions: Option<i64>,
    pub deletions: Option<i64>,
    pub changed_files: Option<i64>,
    pub commits: Option<i64>,
    pub is_revert: bool,
    pub reverts_number: Option<i64>,
    pub reverted: bool,
    pub is_hotfix: bool,
    pub labels: Vec<String>,
    pub updated_at: i64,
    /// Time spent as a draft, from `pull_request` webhooks and backfilled issue events (start,
    /// end; `None`: still a draft).
    pub draft_intervals: Vec<(i64, Option<i64>)>,
    /// Reviews that count (not by the author; bots only when configured).
    pub reviews: i64,
}

/// A stored review, for tests and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRow {
    pub github_id: i64,
    pub repo: String,
    pub pr_number: i64,
    pub reviewer_id: i64,
    pub state: String,
    pub submitted_at: i64,
    pub comment_count: i64,
}

/// A stored member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub github_id: i64,
    pub login: String,
    pub name: Option<String>,
    pub is_bot: bool,
    pub first_seen: i64,
    pub updated: i64,
}

const PULL_COLUMNS: &str = "p.repo, p.number, p.github_id, p.title, m.login AS author, p.author_id, \
    m.is_bot AS author_is_bot, p.state, p.draft, p.base_ref, p.head_ref, p.head_sha, \
    p.merge_commit_sha, p.created_at, p.ready_for_review_at, p.first_commit_at, \
    p.first_review_at, p.merged_at, p.closed_at, p.additions, p.deletions, p.changed_files, \
    p.commits, p.is_revert, p.reverts_number, p.reverted, p.is_hotfix, p.labels, p.updated_at, p.draft_intervals, \
    (SELECT COUNT(*) FROM pr_activity a WHERE a.repo = p.repo AND a.pr_number = p.number \
     AND a.kind = 'review' AND a.counts = 1) AS reviews";

/// What a summary reads: [`PULL_COLUMNS`] with the columns no summary uses (title, branches,
/// commits, labels, …) left empty, as reading them is most of the cost on large windows.
/// The columns a summary uses, and nothing else, aliased `c0`… for [`Dialect::json_rows`];
/// [`summary_row`] reads them by position.
const SUMMARY_COLUMNS: &str = "p.number AS c0, m.login AS c1, p.author_id AS c2, \
    m.is_bot AS c3, p.state AS c4, p.created_at AS c5, p.ready_for_review_at AS c6, \
    p.first_commit_at AS c7, p.first_review_at AS c8, p.merged_at AS c9, p.closed_at AS c10, \
    p.additions AS c11, p.deletions AS c12, p.reverted AS c13, p.is_hotfix AS c14, \
    p.draft_intervals AS c15, \
    (SELECT COUNT(*) FROM pr_activity a WHERE a.repo = p.repo AND a.pr_number = p.number \
     AND a.kind = 'review' AND a.counts = 1) AS c16";
const SUMMARY_ALIASES: &str =
    "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16";

/// A row of [`SUMMARY_COLUMNS`] as a JSON array; the fields a summary does not use are left
/// empty.
fn summary_row(v: &Value) -> Result<PullRequestRow, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("pull request summary row: {what}"));
    let cell = |i: usize| v.get(i).filter(|c| !c.is_null());
    let int = |i: usize| cell(i).and_then(Value::as_i64);
    let flag = |i: usize| {
        cell(i)
            .map(|c| c.as_i64().map(|n| n != 0).or(c.as_bool()).unwrap_or(false))
            .unwrap_or(false)
    };
    Ok(PullRequestRow {
        repo: String::new(),
        number: int(0).ok_or_else(|| bad("number"))?,
        github_id: 0,
        title: String::new(),
        author: cell(1).and_then(Value::as_str).map(str::to_owned),
        author_id: int(2),
        author_is_bot: flag(3),
        state: cell(4)
            .and_then(Value::as_str)
            .ok_or_else(|| bad("state"))?
            .to_owned(),
        draft: false,
        base_ref: None,
        head_ref: None,
        head_sha: None,
        merge_commit_sha: None,
        created_at: int(5).ok_or_else(|| bad("created_at"))?,
        ready_for_review_at: int(6),
        first_commit_at: int(7),
        first_review_at: int(8),
        merged_at: int(9),
        closed_at: int(10),
        additions: int(11),
        deletions: int(12),
        changed_files: None,
        commits: None,
        is_revert: false,
        reverts_number: None,
        reverted: flag(13),
        is_hotfix: flag(14),
        labels: Vec::new(),
        updated_at: 0,
        draft_intervals: match cell(15).and_then(Value::as_str) {
            Some(text) => parse_draft_intervals(text)
                .map_err(|e| StoreError::Corrupt(format!("pull_requests.draft_intervals: {e}")))?,
            None => Vec::new(),
        },
        reviews: int(16).unwrap_or(0),
    })
}

fn pull_row(r: &AnyRow) -> Result<PullRequestRow, StoreError> {
    let labels: String = r.try_get("labels")?;
    let labels = serde_json::from_str(&labels)
        .map_err(|e| StoreError::Corrupt(format!("pull_requests.labels: {e}")))?;
    let is = |col: &str| -> Result<bool, sqlx::Error> { Ok(r.try_get::<i64, _>(col)? != 0) };
    Ok(PullRequestRow {
        repo: r.try_get("repo")?,
        number: r.try_get("number")?,
        github_id: r.try_get("github_id")?,
        title: r.try_get("title")?,
        author: opt_text(r, "author")?,
        author_id: r.try_get("author_id")?,
        author_is_bot: r.try_get::<Option<i64>, _>("author_is_bot")?.unwrap_or(0) != 0,
        state: r.try_get("state")?,
        draft: is("draft")?,
        base_ref: opt_text(r, "base_ref")?,
        head_ref: opt_text(r, "head_ref")?,
        head_sha: opt_text(r, "head_sha")?,
        merge_commit_sha: opt_text(r, "merge_commit_sha")?,
        created_at: r.try_get("created_at")?,
        ready_for_review_at: r.try_get("ready_for_review_at")?,
        first_commit_at: r.try_get("first_commit_at")?,
        first_review_at: r.try_get("first_review_at")?,
        merged_at: r.try_get("merged_at")?,
        closed_at: r.try_get("closed_at")?,
        additions: r.try_get("additions")?,
        deletions: r.try_get("deletions")?,
        changed_files: r.try_get("changed_files")?,
        commits: r.try_get("commits")?,
        is_revert: is("is_revert")?,
        reverts_number: r.try_get("reverts_number")?,
        reverted: is("reverted")?,
        is_hotfix: is("is_hotfix")?,
        labels,
        updated_at: r.try_get("updated_at")?,
        draft_intervals: match opt_text(r, "draft_intervals")? {
            Some(text) => parse_draft_intervals(&text)
                .map_err(|e| StoreError::Corrupt(format!("pull_requests.draft_intervals: {e}")))?,
            None => Vec::new(),
        },
        reviews: r.try_get("reviews")?,
    })
}

impl Store {
    /// Pull requests matching `filter`, by repository, creation time and number.
    pub async fn pull_requests(
        &self,
        filter: &PullFilter,
    ) -> Result<Vec<PullRequestRow>, StoreError> {
        if filter.author_ids.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new("");
        push_pull_query(&mut sql, PULL_COLUMNS, filter);
        sql.push(" ORDER BY p.repo, p.created_at, p.number");
        sql.fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(pull_row)
            .collect()
    }

    /// The same with only what [`crate::metrics::summarize`] uses: repository, title, branches,
    /// commit shas, labels, revert links, file and commit counts and `updated_at` are left
    /// empty, `draft` and `is_revert` false.
    pub async fn pull_requests_for_summary(
        &self,
        filter: &PullFilter,
    ) -> Result<Vec<PullRequestRow>, StoreError> {
        if filter.author_ids.as_ref().is_some_and(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new(&self.inner.dialect.json_rows(SUMMARY_ALIASES));
        push_pull_query(&mut sql, SUMMARY_COLUMNS, filter);
        sql.push(") t");
        let text: Option<String> = match sql.fetch_optional(self.inner.reads()).await? {
            Some(row) => row.try_get(0)?,
            None => None,
        };
        let rows: Vec<Value> = serde_json::from_str(text.as_deref().unwrap_or("[]"))
            .map_err(|e| StoreError::Corrupt(format!("pull request summary rows: {e}")))?;
        let mut rows = rows
            .iter()
            .map(summary_row)
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by_key(|r| (r.created_at, r.number));
        Ok(rows)
    }

    /// Reviews submitted in [from, to) by people other than the pull request's author, per
    /// reviewer login, most first. Bots are left out.
    pub async fn reviews_per_reviewer(
        &self,
        repo: Option<&str>,
        reviewer_ids: Option<&[i64]>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        if reviewer_ids.is_some_and(<[i64]>::is_empty) {
            return Ok(Vec::new());
        }
        // pr_activity's review rows say whether a review counts (not by the author, which is
        // decided when it is recorded); grouped by user id before the members are joined.
        let mut sql = Sql::new(
            "SELECT m.login, CAST(SUM(x.n) AS BIGINT) AS n FROM (SELECT a.actor_id, COUNT(*) AS n FROM pr_activity a \
             WHERE a.kind = 'review' AND a.counts = 1 AND a.at >= ",
        );
        sql.bind(from).push(" AND a.at < ").bind(to);
        if let Some(repo) = repo {
            sql.push(" AND a.repo = ").bind(repo);
        }
        if let Some(ids) = reviewer_ids {
            sql.push(" AND a.actor_id IN ")
                .bind_list(ids.iter().copied());
        }
        sql.push(
            " GROUP BY a.actor_id) x JOIN members m ON m.github_id = x.actor_id WHERE m.is_bot = 0",
        );
        sql.push(" GROUP BY m.login ORDER BY n DESC, m.login");
        Ok(sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// (lowercase login, user id) for every user seen under one of `logins` (lowercase), now
    /// or before a rename.
    pub async fn known_logins(&self, logins: &[String]) -> Result<Vec<(String, i64)>, StoreError> {
        if logins.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql =
            Sql::new("SELECT login_lower, github_id FROM member_logins WHERE login_lower IN ");
        sql.bind_list(logins.iter().map(String::as_str))
            .push(" ORDER BY login_lower, github_id");
        Ok(sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Every review of a pull request, by id.
    pub async fn reviews_of(&self, repo: &str, number: i64) -> Result<Vec<ReviewRow>, StoreError> {
        let mut sql = Sql::new(
            "SELECT github_id, repo, pr_number, reviewer_id, state, submitted_at, comment_count \
             FROM reviews WHERE repo = ",
        );
        sql.bind(repo)
            .push(" AND pr_number = ")
            .bind(number)
            .push(" ORDER BY github_id");
        Ok(sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| {
                Ok(ReviewRow {
                    github_id: r.try_get(0)?,
                    repo: r.try_get(1)?,
                    pr_number: r.try_get(2)?,
                    reviewer_id: r.try_get(3)?,
                    state: r.try_get(4)?,
                    submitted_at: r.try_get(5)?,
                    comment_count: r.try_get(6)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Every member, by GitHub id.
    pub async fn members(&self) -> Result<Vec<MemberRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT github_id, login, name, is_bot, first_seen, updated FROM members ORDER BY github_id",
        )
        .fetch_all(self.inner.reads())
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(MemberRow {
                    github_id: r.try_get(0)?,
                    login: r.try_get(1)?,
                    name: r.try_get(2)?,
                    is_bot: r.try_get::<i64, _>(3)? != 0,
                    first_seen: r.try_get(4)?,
                    updated: r.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }
}

/// A stored event a metrics rebuild replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEventRef {
    pub id: i64,
    pub event: String,
    pub action: Option<String>,
}

impl Store {
    /// Applies effects in one transaction, as a finished job does. For `metrics rebuild` and
    /// tests; handlers return effects to the queue instead.
    pub async fn apply_effects(&self, effects: &[super::Effect]) -> Result<(), StoreError> {
        self.bounded(async {
            let mut tx = self.write_transaction().await?;
            for effect in effects {
                super::jobs::apply_effect(&mut *tx, effect).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Empties the metrics tables (members, pull requests, reviews, activity, draft changes,
    /// first commits) before a rebuild; the events and API snapshots they come from stay.
    pub async fn clear_metrics(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let mut tx = self.write_transaction().await?;
            for statement in [
                "DELETE FROM pr_activity",
                "DELETE FROM pr_draft_changes",
                "DELETE FROM pr_first_commits",
                "DELETE FROM reviews",
                "DELETE FROM pull_requests",
                "DELETE FROM member_logins",
                "DELETE FROM members",
            ] {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Stored events of the given types with an id above `after`, oldest first.
    pub async fn events_of_types(
        &self,
        types: &[&str],
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEventRef>, StoreError> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Sql::new("SELECT id, event, action FROM events WHERE id > ");
        sql.bind(after)
            .push(" AND event IN ")
            .bind_list(types.iter().copied());
        sql.push(" ORDER BY id LIMIT ").bind(i64::from(limit));
        Ok(sql
            .fetch_all(self.inner.reads())
            .await?
            .iter()
            .map(|r| {
                Ok(StoredEventRef {
                    id: r.try_get(0)?,
                    event: r.try_get(1)?,
                    action: opt_text(r, "action")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }
}

/// `SELECT columns FROM pull_requests p …` for `filter`, unordered (an empty `author_ids`
/// is the caller's to answer).
fn push_pull_query<'a>(sql: &mut Sql<'a>, columns: &str, filter: &'a PullFilter) {
    sql.push("SELECT ");
    sql.push(columns)
        .push(" FROM pull_requests p LEFT JOIN members m ON m.github_id = p.author_id WHERE 1 = 1");
    if let Some(repo) = &filter.repo {
        sql.push(" AND p.repo = ").bind(repo.as_str());
    }
    if let Some(author) = &filter.author {
        sql.push(" AND LOWER(m.login) = ")
            .bind(author.to_lowercase());
    }
    if let Some(ids) = &filter.author_ids {
        sql.push(" AND p.author_id IN ")
            .bind_list(ids.iter().copied());
    }
    // Each branch is a range on its own index ((repo, created_at), (repo, merged_at),
    // (repo, closed_at)); an OR over the three would walk every row of the repository.
    // `COALESCE(merged_at, closed_at)` in range is "merged in range, or closed in range
    // without a merge".
    let range = |sql: &mut Sql<'a>, column: &str, from: Option<i64>, to: Option<i64>| {
        sql.push("SELECT id FROM pull_requests WHERE 1 = 1");
        if let Some(repo) = &filter.repo {
            sql.push(" AND repo = ").bind(repo.as_str());
        }
        if let Some(from) = from {
            sql.push(&format!(" AND {column} >= ")).bind(from);
        }
        if let Some(to) = to {
            sql.push(&format!(" AND {column} < ")).bind(to);
        }
    };
    sql.push(" AND p.id IN (");
    range(sql, "created_at", filter.created_from, filter.created_to);
    if filter.ended_from.is_some() || filter.ended_to.is_some() {
        sql.push(" UNION ");
        range(sql, "merged_at", filter.ended_from, filter.ended_to);
        sql.push(" AND merged_at IS NOT NULL UNION ");
        range(sql, "closed_at", filter.ended_from, filter.ended_to);
        sql.push(" AND merged_at IS NULL AND closed_at IS NOT NULL");
    }
    sql.push(")");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::tests::sqlite_store;

    fn pull_request(updated_at: i64) -> PullRequestRecord {
        PullRequestRecord {
            repo: "o/r".into(),
            number: 7,
            github_id: 700,
            author_id: Some(1),
            title: "Fix".into(),
            state: "open",
            draft: false,
            base_ref: Some("main".into()),
            head_ref: Some("fix".into()),
            head_sha: Some("a".repeat(40)),
            merge_commit_sha: None,
            created_at: 1_000,
            ready_for_review_at: None,
            draft_change: None,
            merged_at: None,
            closed_at: None,
            size: Some(PullRequestSize {
                additions: 1,
                deletions: 1,
                changed_files: 1,
                commits: 1,
            }),
            is_revert: false,
            reverts_sha: None,
            reverts_number: None,
            is_hotfix: false,
            labels: "[]".into(),
            updated_at,
        }
    }

    /// The indexed columns' update alone (rows it changed), then the whole upsert, committed.
    async fn apply(store: &Store, pr: &PullRequestRecord) -> u64 {
        let mut tx = store.write_transaction().await.unwrap();
        let changed = update_indexed_columns(&mut *tx, pr).await.unwrap();
        upsert_pull_request(&mut *tx, pr).await.unwrap();
        tx.commit().await.unwrap();
        changed
    }

    async fn stored(store: &Store) -> (i64, Option<String>, Option<i64>, String, i64) {
        let row = sqlx::query(
            "SELECT github_id, head_sha, merged_at, title, updated_at FROM pull_requests",
        )
        .fetch_one(&store.inner.read)
        .await
        .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
    }

    /// Events that change no indexed column (most of a pull request's) write no index: the
    /// indexed columns' update changes no row, while the other columns still follow them.
    #[tokio::test]
    async fn indexed_columns_are_written_only_when_they_change() {
        let (store, dir) = sqlite_store("hookdock-indexed").await;
        let (a, b) = (Some("a".repeat(40)), Some("b".repeat(40)));
        let with = |updated_at, change: &dyn Fn(&mut PullRequestRecord)| {
            let mut pr = pull_request(updated_at);
            change(&mut pr);
            pr
        };
        // Each event, the rows the indexed columns' update changes, and the stored
        // (github_id, head_sha, merged_at, title, updated_at) after the whole upsert.
        let steps = [
            // A new row is inserted.
            (pull_request(10), 0, (700, a.clone(), None, "Fix", 10)),
            (
                with(20, &|pr| {
                    pr.title = "Fix it".into();
                    pr.labels = r#"["bug"]"#.into();
                }),
                0,
                (700, a.clone(), None, "Fix it", 20),
            ),
            (
                with(30, &|pr| pr.head_sha = b.clone()),
                1,
                (700, b.clone(), None, "Fix", 30),
            ),
            // Older than the stored state: neither its head nor its merge time is taken.
            (
                with(25, &|pr| {
                    pr.head_sha = a.clone();
                    pr.merged_at = Some(25);
                }),
                0,
                (700, b.clone(), None, "Fix", 30),
            ),
            // An earlier id is taken whatever the event's time; a later one is not.
            (
                with(5, &|pr| pr.github_id = 699),
                1,
                (699, b.clone(), None, "Fix", 30),
            ),
            (
                with(40, &|pr| {
                    pr.github_id = 701;
                    pr.head_sha = b.clone();
                }),
                0,
                (699, b.clone(), None, "Fix", 40),
            ),
        ];
        for (i, (event, changed, (id, head, merged, title, updated))) in steps.iter().enumerate() {
            assert_eq!(apply(&store, event).await, *changed, "step {i}");
            assert_eq!(
                stored(&store).await,
                (*id, head.clone(), *merged, (*title).to_owned(), *updated),
                "step {i}"
            );
        }
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    /// A record with a merge of its own, and where to read the stored result.
    trait Merged: Sized {
        const READ: &str;
        async fn merge(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> u64;
    }

    impl Merged for ReviewRecord {
        const READ: &str = "SELECT state, submitted_at FROM reviews";
        async fn merge(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> u64 {
            merge_review(&mut **tx, self).await.unwrap()
        }
    }

    impl Merged for PrActivityRecord {
        const READ: &str = "SELECT review_id, at, deleted FROM pr_activity";
        async fn merge(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> u64 {
            merge_pr_activity(&mut **tx, self).await.unwrap()
        }
    }

    /// Merges each record in a transaction of its own: the rows each changed, and then the
    /// stored row.
    async fn merges<R: Merged>(store: &Store, records: &[R]) -> (Vec<u64>, AnyRow) {
        let mut changed = Vec::new();
        for r in records {
            let mut tx = store.write_transaction().await.unwrap();
            changed.push(r.merge(&mut tx).await);
            tx.commit().await.unwrap();
        }
        let row = sqlx::query(R::READ)
            .fetch_one(&store.inner.read)
            .await
            .unwrap();
        (changed, row)
    }

    /// A repeated review or activity (an edit, a redelivery, a backfill run again) changes no
    /// row, so it rewrites none of their indexes; a real change still lands.
    #[tokio::test]
    async fn repeated_reviews_and_activities_change_no_row() {
        let (store, dir) = sqlite_store("hookdock-repeats").await;
        let review = |state: &str, submitted_at| ReviewRecord {
            github_id: 5,
            repo: "o/r".into(),
            pr_number: 7,
            reviewer_id: 2,
            state: state.into(),
            submitted_at,
        };
        let reviews = [
            review("approved", 20),
            review("approved", 20),
            review("approved", 30),
            review("dismissed", 30),
            review("approved", 40),
            review("approved", 10),
        ];
        let (changed, row) = merges(&store, &reviews).await;
        assert_eq!(changed, [1, 0, 0, 1, 0, 1]);
        assert_eq!(
            (row.get::<String, _>(0), row.get::<i64, _>(1)),
            ("dismissed".into(), 10)
        );

        let activity = |review_id, at, deleted| PrActivityRecord {
            kind: ActivityKind::ReviewComment,
            source_id: 9,
            repo: "o/r".into(),
            pr_number: 7,
            actor_id: 2,
            review_id,
            at,
            counts: true,
            deleted,
        };
        let activities = [
            activity(None, 50, false),
            activity(None, 50, false),
            activity(Some(5), 60, false),
            activity(Some(5), 60, false),
            activity(None, 50, true),
            activity(None, 40, false),
        ];
        let (changed, row) = merges(&store, &activities).await;
        assert_eq!(changed, [1, 0, 1, 0, 1, 1]);
        assert_eq!(
            (
                row.get::<i64, _>(0),
                row.get::<i64, _>(1),
                row.get::<i64, _>(2)
            ),
            (5, 40, 1)
        );
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    /// The `indexed` flags follow the schema: a column is flagged exactly when an index of
    /// `pull_requests` holds it or its condition reads it.
    #[tokio::test]
    async fn indexed_flags_match_the_schema() {
        let (store, dir) = sqlite_store("hookdock-indexed-flags").await;
        let indexes: Vec<(String, Option<String>)> = sqlx::query(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'pull_requests'",
        )
        .fetch_all(&store.inner.read)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        assert!(indexes.len() >= 10, "{indexes:?}");
        let mut covered = std::collections::BTreeSet::new();
        for (name, sql) in &indexes {
            let columns = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT name FROM pragma_index_info('{name}')"
            )))
            .fetch_all(&store.inner.read)
            .await
            .unwrap();
            covered.extend(columns.iter().map(|r| r.get::<String, _>(0)));
            // A partial index's condition: every merged column it names.
            if let Some(condition) = sql.as_deref().and_then(|s| s.split_once(" WHERE ")) {
                for (column, _, _) in MERGED_COLUMNS {
                    if condition
                        .1
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .any(|word| word == *column)
                    {
                        covered.insert((*column).to_owned());
                    }
                }
            }
        }
        for (column, _, indexed) in MERGED_COLUMNS {
            assert_eq!(covered.contains(*column), *indexed, "{column}");
        }
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_members_login_is_written_only_when_a_newer_event_changes_it() {
        let (store, dir) = sqlite_store("hookdock-login").await;
        let member = |login: &str, seen_at| MemberRecord {
            github_id: 9,
            login: login.into(),
            name: None,
            is_bot: false,
            seen_at,
        };
        let apply = |m: MemberRecord| {
            let store = store.clone();
            async move {
                let mut tx = store.write_transaction().await.unwrap();
                let changed = update_login(&mut *tx, &m).await.unwrap();
                upsert_member(&mut *tx, &m).await.unwrap();
                tx.commit().await.unwrap();
                let login: String = sqlx::query("SELECT login FROM members WHERE github_id = 9")
                    .fetch_one(&store.inner.read)
                    .await
                    .unwrap()
                    .get(0);
                (changed, login)
            }
        };
        assert_eq!(apply(member("carol", 10)).await, (0, "carol".into()));
        assert_eq!(apply(member("carol", 20)).await, (0, "carol".into()));
        assert_eq!(apply(member("carol-2", 15)).await, (0, "carol".into()));
        assert_eq!(apply(member("carol-2", 30)).await, (1, "carol-2".into()));
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }
}
