//! Pull request flow metrics, computed from stored pull requests (DevLake's cycle-time
//! breakdown): coding, pickup, review and cycle time, time to merge, size, throughput, revert
//! and hotfix rates, review coverage, reviews per reviewer, and a weekly series.
//!
//! Pure functions over [`PullRequestRow`]s: no SQL and no clock here ([`load_summary`] only
//! reads the rows through the store and hands them over). Durations are whole
//! minutes (rounded down), reported as hours with four decimals; weeks start on Monday 00:00
//! UTC. Percentiles interpolate linearly between the two nearest values (PostgreSQL's
//! `percentile_cont`) and are then rounded to the minute.

mod calendar;

use serde::Serialize;

pub use self::calendar::{
    Calendar, CalendarError, CalendarInfo, ResolvedTeams, Team, Teams, WorkingTime,
};
use crate::store::{PullFilter, PullRequestRow, Store, StoreError, rfc3339};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;

/// One pull request with its durations, as `/api/v1/metrics/pulls` serves it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PullMetrics {
    pub repo: String,
    pub number: i64,
    pub title: String,
    pub author: Option<String>,
    pub author_is_bot: bool,
    /// The first configured team (in configuration order) the author belongs to.
    pub team: Option<String>,
    pub state: String,
    pub draft: bool,
    pub base_ref: Option<String>,
    pub head_ref: Option<String>,
    pub created_at: String,
    pub ready_for_review_at: Option<String>,
    pub first_commit_at: Option<String>,
    pub first_review_at: Option<String>,
    pub merged_at: Option<String>,
    pub closed_at: Option<String>,
    /// First commit → created.
    pub coding_hours: Option<f64>,
    /// The same, counting only working hours (of the author's team's calendar, else the
    /// default one); likewise for the other `*_working_hours`.
    pub coding_working_hours: Option<f64>,
    /// Created (or ready for review, for drafts) → first review.
    pub pickup_hours: Option<f64>,
    pub pickup_working_hours: Option<f64>,
    /// First review → merged.
    pub review_hours: Option<f64>,
    pub review_working_hours: Option<f64>,
    /// First commit (or created, when that is earlier or the first commit unknown) → merged.
    pub cycle_hours: Option<f64>,
    pub cycle_working_hours: Option<f64>,
    /// Created → merged.
    pub time_to_merge_hours: Option<f64>,
    pub time_to_merge_working_hours: Option<f64>,
    pub additions: Option<i64>,
    pub deletions: Option<i64>,
    /// Additions + deletions.
    pub size: Option<i64>,
    pub changed_files: Option<i64>,
    pub commits: Option<i64>,
    /// Reviews by someone other than the author (bots only when configured).
    pub reviews: i64,
    pub is_revert: bool,
    pub reverts_number: Option<i64>,
    pub reverted: bool,
    pub is_hotfix: bool,
    pub labels: Vec<String>,
}

/// The durations of one pull request in whole minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Durations {
    pub coding: Option<i64>,
    pub pickup: Option<i64>,
    pub review: Option<i64>,
    pub cycle: Option<i64>,
    pub time_to_merge: Option<i64>,
}

/// Whole minutes from `start` to `end`; `None` when either is unknown or time runs backwards.
#[cfg(test)]
fn minutes(start: Option<i64>, end: Option<i64>) -> Option<i64> {
    let (start, end) = (start?, end?);
    (end >= start).then(|| (end - start) / MINUTE_MS)
}

/// Minutes as hours, four decimals.
pub fn hours(minutes: f64) -> f64 {
    (minutes / 60.0 * 10_000.0).round() / 10_000.0
}

/// The durations of `pr`, where `measure(a, b)` is the time counted in [a, b] (milliseconds):
/// all of it, or its working time. Each is rounded down to whole minutes; `None` when a time
/// is unknown or runs backwards.
fn measured(pr: &PullRequestRow, measure: impl Fn(i64, i64) -> i64) -> Durations {
    let span = |start: Option<i64>, end: Option<i64>| -> Option<i64> {
        let (start, end) = (start?, end?);
        (end >= start).then(|| measure(start, end) / MINUTE_MS)
    };
    let pickup = if pr.draft_intervals.is_empty() {
        // Only the first ready-for-review time is known: pickup starts there, unless the
        // review came first (drafts can be reviewed), then at creation.
        let start = match (pr.ready_for_review_at, pr.first_review_at) {
            (Some(ready), Some(review)) if ready <= review => ready,
            _ => pr.created_at,
        };
        span(Some(start), pr.first_review_at)
    } else {
        // Every draft interval is known: creation to first review, less the time in draft.
        pr.first_review_at
            .filter(|end| *end >= pr.created_at)
            .map(|end| {
                let start = pr.created_at;
                let draft: i64 = pr
                    .draft_intervals
                    .iter()
                    .map(|(a, b)| {
                        let (a, b) = ((*a).max(start), b.unwrap_or(end).min(end));
                        if b > a { measure(a, b) } else { 0 }
                    })
                    .sum();
                (measure(start, end) - draft).max(0) / MINUTE_MS
            })
    };
    Durations {
        coding: span(pr.first_commit_at, Some(pr.created_at)),
        pickup,
        review: span(pr.first_review_at, pr.merged_at),
        // A first commit written after the pull request was opened (history rewritten with
        // new dates) gives no coding time, and the cycle starts at creation (as DevLake's,
        // which adds coding time only when it is positive).
        cycle: span(
            Some(
                pr.first_commit_at
                    .map_or(pr.created_at, |c| c.min(pr.created_at)),
            ),
            pr.merged_at,
        ),
        time_to_merge: span(Some(pr.created_at), pr.merged_at),
    }
}

pub fn durations(pr: &PullRequestRow) -> Durations {
    measured(pr, |a, b| b - a)
}

/// The durations counting only the working time of `work`.
pub fn working_durations(pr: &PullRequestRow, work: &WorkingTime) -> Durations {
    measured(pr, |a, b| work.between(a, b))
}

/// Earliest and latest instant a pull request's durations touch.
fn time_range(pr: &PullRequestRow) -> (i64, i64) {
    let times = [
        Some(pr.created_at),
        pr.ready_for_review_at,
        pr.first_commit_at,
        pr.first_review_at,
        pr.merged_at,
    ];
    let known = times.iter().flatten().copied();
    (
        known.clone().min().unwrap_or(pr.created_at),
        known.max().unwrap_or(pr.created_at),
    )
}

/// Working intervals of the calendars pull requests use, built once for a set of rows.
pub struct Clocks<'a> {
    teams: &'a ResolvedTeams<'a>,
    /// Index: team + 1; 0 is the default calendar.
    built: Vec<Option<WorkingTime>>,
}

impl<'a> Clocks<'a> {
    /// Intervals of every calendar in `teams` over the times of `rows`.
    pub fn new<'r>(
        teams: &'a ResolvedTeams<'a>,
        rows: impl IntoIterator<Item = &'r PullRequestRow>,
    ) -> Clocks<'a> {
        let range = rows
            .into_iter()
            .map(time_range)
            .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)));
        let built = (0..=teams.teams.teams.len())
            .map(|i| {
                let team = i.checked_sub(1);
                // Teams sharing the default calendar share its intervals.
                let shares_default = team.is_some_and(|t| {
                    std::sync::Arc::ptr_eq(teams.calendar(Some(t)), teams.calendar(None))
                });
                match range {
                    Some((from, to)) if !shares_default => {
                        Some(teams.calendar(team).working_time(from, to))
                    }
                    _ => None,
                }
            })
            .collect();
        Clocks { teams, built }
    }

    /// The working time of team `team`'s calendar (or the default one).
    pub fn of(&self, team: Option<usize>) -> Option<&WorkingTime> {
        let i = team.map_or(0, |t| t + 1);
        self.built
            .get(i)
            .and_then(Option::as_ref)
            .or_else(|| self.built.first().and_then(Option::as_ref))
    }

    pub fn teams(&self) -> &ResolvedTeams<'a> {
        self.teams
    }
}

fn size(pr: &PullRequestRow) -> Option<i64> {
    Some(pr.additions? + pr.deletions?)
}

/// One row of `/api/v1/metrics/pulls`: working hours use the calendar of `team` when given
/// (a team filter), else that of the author's first team, else the default.
pub fn pull_metrics(pr: &PullRequestRow, clocks: &Clocks<'_>, team: Option<usize>) -> PullMetrics {
    let author_team = clocks.teams().team_of(pr);
    let d = durations(pr);
    let w = clocks
        .of(team.or(author_team))
        .map(|work| working_durations(pr, work))
        .unwrap_or_default();
    let h = |m: Option<i64>| m.map(|m| hours(m as f64));
    PullMetrics {
        repo: pr.repo.clone(),
        number: pr.number,
        title: pr.title.clone(),
        author: pr.author.clone(),
        author_is_bot: pr.author_is_bot,
        team: author_team
            .and_then(|t| clocks.teams().teams.teams.get(t))
            .map(|t| t.name.clone()),
        state: pr.state.clone(),
        draft: pr.draft,
        base_ref: pr.base_ref.clone(),
        head_ref: pr.head_ref.clone(),
        created_at: rfc3339(pr.created_at),
        ready_for_review_at: pr.ready_for_review_at.map(rfc3339),
        first_commit_at: pr.first_commit_at.map(rfc3339),
        first_review_at: pr.first_review_at.map(rfc3339),
        merged_at: pr.merged_at.map(rfc3339),
        closed_at: pr.closed_at.map(rfc3339),
        coding_hours: h(d.coding),
        coding_working_hours: h(w.coding),
        pickup_hours: h(d.pickup),
        pickup_working_hours: h(w.pickup),
        review_hours: h(d.review),
        review_working_hours: h(w.review),
        cycle_hours: h(d.cycle),
        cycle_working_hours: h(w.cycle),
        time_to_merge_hours: h(d.time_to_merge),
        time_to_merge_working_hours: h(w.time_to_merge),
        additions: pr.additions,
        deletions: pr.deletions,
        size: size(pr),
        changed_files: pr.changed_files,
        commits: pr.commits,
        reviews: pr.reviews,
        is_revert: pr.is_revert,
        reverts_number: pr.reverts_number,
        reverted: pr.reverted,
        is_hotfix: pr.is_hotfix,
        labels: pr.labels.clone(),
    }
}

/// Column names of the CSV form, in order.
pub const CSV_HEADER: &[&str] = &[
    "repo",
    "number",
    "title",
    "author",
    "author_is_bot",
    "team",
    "state",
    "draft",
    "base_ref",
    "head_ref",
    "created_at",
    "ready_for_review_at",
    "first_commit_at",
    "first_review_at",
    "merged_at",
    "closed_at",
    "coding_hours",
    "coding_working_hours",
    "pickup_hours",
    "pickup_working_hours",
    "review_hours",
    "review_working_hours",
    "cycle_hours",
    "cycle_working_hours",
    "time_to_merge_hours",
    "time_to_merge_working_hours",
    "additions",
    "deletions",
    "size",
    "changed_files",
    "commits",
    "reviews",
    "is_revert",
    "reverts_number",
    "reverted",
    "is_hotfix",
    "labels",
];

/// The rows as CSV (RFC 4180: CRLF line ends, fields quoted when needed) with a header row.
/// Unknown values are empty; labels are joined with `;`.
pub fn to_csv(rows: &[PullMetrics]) -> String {
    fn field(out: &mut String, value: &str) {
        if value.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&value.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(value);
        }
    }
    fn opt<T: ToString>(v: &Option<T>) -> String {
        v.as_ref().map(ToString::to_string).unwrap_or_default()
    }
    let mut out = CSV_HEADER.join(",");
    out.push_str("\r\n");
    for r in rows {
        let values = [
            r.repo.clone(),
            r.number.to_string(),
            r.title.clone(),
            opt(&r.author),
            r.author_is_bot.to_string(),
            opt(&r.team),
            r.state.clone(),
            r.draft.to_string(),
            opt(&r.base_ref),
            opt(&r.head_ref),
            r.created_at.clone(),
            opt(&r.ready_for_review_at),
            opt(&r.first_commit_at),
            opt(&r.first_review_at),
            opt(&r.merged_at),
            opt(&r.closed_at),
            opt(&r.coding_hours),
            opt(&r.coding_working_hours),
            opt(&r.pickup_hours),
            opt(&r.pickup_working_hours),
            opt(&r.review_hours),
            opt(&r.review_working_hours),
            opt(&r.cycle_hours),
            opt(&r.cycle_working_hours),
            opt(&r.time_to_merge_hours),
            opt(&r.time_to_merge_working_hours),
            opt(&r.additions),
            opt(&r.deletions),
            opt(&r.size),
            opt(&r.changed_files),
            opt(&r.commits),
            r.reviews.to_string(),
            r.is_revert.to_string(),
            opt(&r.reverts_number),
            r.reverted.to_string(),
            r.is_hotfix.to_string(),
            r.labels.join(";"),
        ];
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            field(&mut out, v);
        }
        out.push_str("\r\n");
    }
    out
}

/// The period a summary covers: [since, until), Unix ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since: i64,
    pub until: i64,
}

/// Count and percentiles of one duration, in hours.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DurationStats {
    pub count: usize,
    pub median_hours: Option<f64>,
    pub p75_hours: Option<f64>,
    pub p90_hours: Option<f64>,
}

/// Count and percentiles of pull request size, in changed lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeStats {
    pub count: usize,
    pub median: Option<f64>,
    pub p75: Option<f64>,
    pub p90: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReviewerCount {
    pub login: String,
    pub reviews: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReviewsPerReviewer {
    pub reviewers: usize,
    pub reviews: i64,
    pub average: Option<f64>,
    pub by_reviewer: Vec<ReviewerCount>,
}

/// Merged pull requests of one author in the window, and how many of them were reverted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthorReverts {
    pub author: String,
    pub merged: usize,
    pub reverted: usize,
    pub revert_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Week {
    /// Monday, `YYYY-MM-DD`.
    pub week_start: String,
    pub opened: usize,
    pub merged: usize,
    pub median_cycle_hours: Option<f64>,
    pub median_cycle_working_hours: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullCounts {
    /// Created in the window.
    pub opened: usize,
    /// Merged in the window: the population of every duration and rate below.
    pub merged: usize,
    /// Closed without merge in the window.
    pub closed_without_merge: usize,
}

/// The duration statistics counting only working hours.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkingTimeStats {
    /// The calendar used: the team's with `team=`; otherwise each pull request is measured
    /// with its author's first team's calendar, and this is the default one for the rest.
    pub calendar: CalendarInfo,
    pub coding_time: DurationStats,
    pub pickup_time: DurationStats,
    pub review_time: DurationStats,
    pub cycle_time: DurationStats,
    pub time_to_merge: DurationStats,
}

/// `/api/v1/metrics/summary`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub repo: Option<String>,
    /// Only pull requests authored by this team's members.
    pub team: Option<String>,
    pub since: String,
    pub until: String,
    pub pull_requests: PullCounts,
    pub coding_time: DurationStats,
    pub pickup_time: DurationStats,
    pub review_time: DurationStats,
    pub cycle_time: DurationStats,
    pub time_to_merge: DurationStats,
    /// The same five durations in working hours.
    pub working_time: WorkingTimeStats,
    pub size: SizeStats,
    /// Merged pull requests per week of the window.
    pub throughput_per_week: f64,
    /// Share of merged pull requests that a merged revert reverted.
    pub revert_rate: Option<f64>,
    /// The same per author (pull requests of unknown authors are left out), by author.
    pub revert_rate_by_author: Vec<AuthorReverts>,
    pub hotfix_rate: Option<f64>,
    /// Share of merged pull requests with at least one review by someone else.
    pub review_coverage: Option<f64>,
    /// Share of the merged pull requests of the repository (or all repositories) in the
    /// window, before any team filter, whose author is a member of a configured team; `null`
    /// when no team is configured or nothing was merged.
    pub author_match_rate: Option<f64>,
    pub reviews_per_reviewer: ReviewsPerReviewer,
    pub weekly: Vec<Week>,
}

/// The `p` percentile (0..=1) of sorted values, interpolated linearly.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = p.clamp(0.0, 1.0) * last as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let (a, b) = (sorted[lo], sorted[hi.min(last)]);
    Some(a + (b - a) * (pos - lo as f64))
}

fn sorted(values: impl Iterator<Item = i64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.map(|m| m as f64).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn duration_stats(values: impl Iterator<Item = i64>) -> DurationStats {
    let v = sorted(values);
    let at = |p| percentile(&v, p).map(|m| hours(m.round()));
    DurationStats {
        count: v.len(),
        median_hours: at(0.5),
        p75_hours: at(0.75),
        p90_hours: at(0.9),
    }
}

fn rate(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| (part as f64 / whole as f64 * 10_000.0).round() / 10_000.0)
}

fn in_window(t: Option<i64>, w: Window) -> bool {
    t.is_some_and(|t| t >= w.since && t < w.until)
}

/// Monday 00:00 UTC of the week holding `t`.
pub fn week_start(t: i64) -> i64 {
    // 1970-01-01 was a Thursday: three days after a Monday.
    let day = t.div_euclid(DAY_MS);
    (day - (day + 3).rem_euclid(7)) * DAY_MS
}

/// The summary of `rows` (the pull requests created, merged or closed in the window) over
/// `window`; with `team`, of those authored by that team's members.
pub fn summarize(
    repo: Option<&str>,
    team: Option<usize>,
    rows: &[PullRequestRow],
    reviewers: Vec<(String, i64)>,
    window: Window,
    teams: &ResolvedTeams<'_>,
) -> Summary {
    let is_merged = |r: &PullRequestRow| r.state == "merged" && in_window(r.merged_at, window);
    let merged_all = rows.iter().filter(|r| is_merged(r)).count();
    let matched = rows
        .iter()
        .filter(|r| is_merged(r) && teams.team_of(r).is_some())
        .count();
    let author_match_rate = if teams.teams.teams.is_empty() {
        None
    } else {
        rate(matched, merged_all)
    };
    let rows: Vec<&PullRequestRow> = rows
        .iter()
        .filter(|r| team.is_none_or(|t| teams.is_member(t, r)))
        .collect();
    let clocks = Clocks::new(teams, rows.iter().copied().filter(|r| is_merged(r)));
    let merged: Vec<(&PullRequestRow, Durations, Durations)> = rows
        .iter()
        .copied()
        .filter(|r| is_merged(r))
        .map(|r| {
            let work = clocks.of(team.or_else(|| teams.team_of(r)));
            let working = work.map(|w| working_durations(r, w)).unwrap_or_default();
            (r, durations(r), working)
        })
        .collect();
    let count =
        |f: &dyn Fn(&PullRequestRow) -> bool| merged.iter().filter(|(r, _, _)| f(r)).count();
    let counts = PullCounts {
        opened: rows
            .iter()
            .filter(|r| in_window(Some(r.created_at), window))
            .count(),
        merged: merged.len(),
        closed_without_merge: rows
            .iter()
            .filter(|r| r.state == "closed" && in_window(r.closed_at, window))
            .count(),
    };
    let stat = |f: fn(&Durations) -> Option<i64>| {
        duration_stats(merged.iter().filter_map(|(_, d, _)| f(d)))
    };
    let work_stat = |f: fn(&Durations) -> Option<i64>| {
        duration_stats(merged.iter().filter_map(|(_, _, w)| f(w)))
    };
    let sizes = sorted(merged.iter().filter_map(|(r, _, _)| size(r)));
    let weeks = (window.until - window.since) as f64 / WEEK_MS as f64;

    let mut weekly = Vec::new();
    let mut start = week_start(window.since);
    while start < window.until {
        let week = Window {
            since: start,
            until: start + WEEK_MS,
        };
        let merged_in_week: Vec<&(&PullRequestRow, Durations, Durations)> = merged
            .iter()
            .filter(|(r, _, _)| in_window(r.merged_at, week))
            .collect();
        let cycle = sorted(merged_in_week.iter().filter_map(|(_, d, _)| d.cycle));
        let working_cycle = sorted(merged_in_week.iter().filter_map(|(_, _, w)| w.cycle));
        weekly.push(Week {
            week_start: rfc3339(start).get(..10).unwrap_or_default().to_owned(),
            opened: rows
                .iter()
                .filter(|r| {
                    in_window(Some(r.created_at), week) && in_window(Some(r.created_at), window)
                })
                .count(),
            merged: merged_in_week.len(),
            median_cycle_hours: percentile(&cycle, 0.5).map(|m| hours(m.round())),
            median_cycle_working_hours: percentile(&working_cycle, 0.5).map(|m| hours(m.round())),
        });
        start += WEEK_MS;
    }

    let total_reviews: i64 = reviewers.iter().map(|(_, n)| n).sum();
    let reviews_per_reviewer = ReviewsPerReviewer {
        reviewers: reviewers.len(),
        reviews: total_reviews,
        average: (!reviewers.is_empty())
            .then(|| (total_reviews as f64 / reviewers.len() as f64 * 100.0).round() / 100.0),
        by_reviewer: reviewers
            .into_iter()
            .map(|(login, reviews)| ReviewerCount { login, reviews })
            .collect(),
    };

    let mut by_author: std::collections::BTreeMap<&str, (usize, usize)> =
        std::collections::BTreeMap::new();
    for (r, _, _) in &merged {
        if let Some(author) = r.author.as_deref() {
            let entry = by_author.entry(author).or_default();
            entry.0 += 1;
            entry.1 += usize::from(r.reverted);
        }
    }
    let revert_rate_by_author = by_author
        .into_iter()
        .map(|(author, (merged, reverted))| AuthorReverts {
            author: author.to_owned(),
            merged,
            reverted,
            revert_rate: rate(reverted, merged).unwrap_or(0.0),
        })
        .collect();

    Summary {
        repo: repo.map(str::to_owned),
        team: team
            .and_then(|t| teams.teams.teams.get(t))
            .map(|t| t.name.clone()),
        since: rfc3339(window.since),
        until: rfc3339(window.until),
        coding_time: stat(|d| d.coding),
        pickup_time: stat(|d| d.pickup),
        review_time: stat(|d| d.review),
        cycle_time: stat(|d| d.cycle),
        time_to_merge: stat(|d| d.time_to_merge),
        working_time: WorkingTimeStats {
            calendar: teams.calendar(team).info().clone(),
            coding_time: work_stat(|d| d.coding),
            pickup_time: work_stat(|d| d.pickup),
            review_time: work_stat(|d| d.review),
            cycle_time: work_stat(|d| d.cycle),
            time_to_merge: work_stat(|d| d.time_to_merge),
        },
        size: SizeStats {
            count: sizes.len(),
            median: percentile(&sizes, 0.5),
            p75: percentile(&sizes, 0.75),
            p90: percentile(&sizes, 0.9),
        },
        throughput_per_week: if weeks > 0.0 {
            (merged.len() as f64 / weeks * 100.0).round() / 100.0
        } else {
            0.0
        },
        revert_rate: rate(count(&|r| r.reverted), merged.len()),
        revert_rate_by_author,
        hotfix_rate: rate(count(&|r| r.is_hotfix), merged.len()),
        review_coverage: rate(count(&|r| r.reviews > 0), merged.len()),
        author_match_rate,
        reviews_per_reviewer,
        weekly,
        pull_requests: counts,
    }
}

/// What a summary covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRequest {
    pub repo: Option<String>,
    /// Index into [`Teams::teams`].
    pub team: Option<usize>,
    pub window: Window,
}

/// Reads what a summary needs from the store and summarizes it: `/api/v1/metrics/summary`
/// (and the benchmark) in one call.
pub async fn load_summary(
    store: &Store,
    teams: &Teams,
    request: &SummaryRequest,
) -> Result<Summary, StoreError> {
    let window = request.window;
    let known = store.known_logins(&teams.all_logins()).await?;
    let resolved = teams.resolve(&known);
    let filter = PullFilter {
        repo: request.repo.clone(),
        created_from: Some(window.since),
        created_to: Some(window.until),
        ended_from: Some(window.since),
        ended_to: Some(window.until),
        ..PullFilter::default()
    };
    let rows = store.pull_requests_for_summary(&filter).await?;
    let reviewer_ids = request.team.map(|t| resolved.member_ids(t));
    let reviewers = store
        .reviews_per_reviewer(
            request.repo.as_deref(),
            reviewer_ids.as_deref(),
            window.since,
            window.until,
        )
        .await?;
    Ok(summarize(
        request.repo.as_deref(),
        request.team,
        &rows,
        reviewers,
        window,
        &resolved,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    /// 2024-01-01T00:00:00Z, a Monday.
    const T0: i64 = 1_704_067_200_000;

    fn pr(number: i64) -> PullRequestRow {
        PullRequestRow {
            repo: "o/r".into(),
            number,
            github_id: number,
            title: format!("PR {number}"),
            author: Some("ann".into()),
            author_id: Some(1),
            author_is_bot: false,
            state: "open".into(),
            draft: false,
            base_ref: Some("main".into()),
            head_ref: Some("f".into()),
            head_sha: None,
            merge_commit_sha: None,
            created_at: T0,
            ready_for_review_at: None,
            first_commit_at: None,
            first_review_at: None,
            merged_at: None,
            closed_at: None,
            additions: Some(10),
            deletions: Some(2),
            changed_files: Some(1),
            commits: Some(1),
            is_revert: false,
            reverts_number: None,
            reverted: false,
            is_hotfix: false,
            labels: vec![],
            updated_at: T0,
            draft_intervals: vec![],
            reviews: 0,
        }
    }

    fn teams(team: Option<(&str, &[&str])>) -> Teams {
        let weekdays: Vec<String> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .map(|d| (*d).to_owned())
            .collect();
        let default_calendar =
            std::sync::Arc::new(Calendar::new("t", "UTC", &weekdays, "09:00-17:00", &[]).unwrap());
        Teams {
            teams: team
                .map(|(name, logins)| Team {
                    name: name.into(),
                    logins: logins.iter().map(|l| (*l).to_owned()).collect(),
                    calendar: std::sync::Arc::clone(&default_calendar),
                })
                .into_iter()
                .collect(),
            default_calendar,
        }
    }

    fn one(p: &PullRequestRow) -> PullMetrics {
        let teams = teams(None);
        let resolved = teams.resolve(&[]);
        let clocks = Clocks::new(&resolved, [p]);
        pull_metrics(p, &clocks, None)
    }

    #[test]
    fn durations_follow_the_definitions() {
        let mut p = pr(1);
        p.first_commit_at = Some(T0 - 2 * H);
        p.first_review_at = Some(T0 + 3 * H + 30 * MINUTE_MS);
        p.merged_at = Some(T0 + 5 * H);
        p.state = "merged".into();
        let d = durations(&p);
        assert_eq!(d.coding, Some(120));
        assert_eq!(d.pickup, Some(210));
        assert_eq!(d.review, Some(90));
        assert_eq!(d.cycle, Some(420));
        assert_eq!(d.time_to_merge, Some(300));
        let m = one(&p);
        assert_eq!(m.pickup_hours, Some(3.5));
        // UTC 09:00-17:00: Sunday 22:00 → Monday 05:00 holds no working time.
        assert_eq!(m.pickup_working_hours, Some(0.0));
        assert_eq!(m.cycle_working_hours, Some(0.0));
        assert_eq!(m.size, Some(12));
    }

    #[test]
    fn a_first_commit_after_creation_gives_no_coding_time_and_cycle_from_creation() {
        let mut p = pr(1);
        p.first_commit_at = Some(T0 + H);
        p.merged_at = Some(T0 + 3 * H);
        let d = durations(&p);
        assert_eq!(d.coding, None);
        assert_eq!(d.cycle, Some(180));
        assert_eq!(d.cycle, d.time_to_merge);
    }

    #[test]
    fn draft_pickup_starts_when_ready_unless_reviewed_before() {
        let mut p = pr(1);
        p.ready_for_review_at = Some(T0 + H);
        p.first_review_at = Some(T0 + 2 * H);
        assert_eq!(durations(&p).pickup, Some(60));
        p.first_review_at = Some(T0 + 30 * MINUTE_MS);
        assert_eq!(durations(&p).pickup, Some(30));
    }

    #[test]
    fn every_draft_interval_is_left_out_of_pickup_time() {
        let mut p = pr(1);
        // Draft 0-1 h, ready 1-3 h, draft again 3-4 h (review at 3:30 does not end it), ready
        // after 4 h; reviewed at 5 h: pickup 3 h of 5.
        p.draft_intervals = vec![(T0, Some(T0 + H)), (T0 + 3 * H, Some(T0 + 4 * H))];
        p.ready_for_review_at = Some(T0 + H);
        p.first_review_at = Some(T0 + 5 * H);
        assert_eq!(durations(&p).pickup, Some(180));
        // Still a draft when reviewed: only the time before the draft counts.
        p.draft_intervals = vec![(T0 + 2 * H, None)];
        assert_eq!(durations(&p).pickup, Some(120));
        // In working time (UTC 09:00-17:00): opened Monday 08:00, draft 10:00-12:00, reviewed
        // 13:00: 1 h + 1 h.
        let t = |h: i64| T0 + h * H;
        p.created_at = t(8);
        p.draft_intervals = vec![(t(10), Some(t(12)))];
        p.first_review_at = Some(t(13));
        let teams = teams(None);
        let resolved = teams.resolve(&[]);
        let clocks = Clocks::new(&resolved, [&p]);
        let work = clocks.of(None).expect("built");
        assert_eq!(working_durations(&p, work).pickup, Some(120));
        assert_eq!(durations(&p).pickup, Some(180));
    }

    #[test]
    fn unknown_or_backwards_times_give_no_duration() {
        let p = pr(1);
        let d = durations(&p);
        assert_eq!(d, Durations::default());
        assert_eq!(minutes(Some(10), Some(5)), None);
        assert_eq!(minutes(Some(0), Some(119_999)), Some(1), "rounded down");
    }

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(2.5));
        assert_eq!(percentile(&v, 0.75), Some(3.25));
        assert_eq!(percentile(&[7.0], 0.9), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn weeks_start_on_monday_utc() {
        assert_eq!(week_start(T0), T0);
        assert_eq!(week_start(T0 + 6 * DAY_MS + 23 * H), T0);
        assert_eq!(week_start(T0 - 1), T0 - WEEK_MS);
        assert_eq!(rfc3339(week_start(0)), "1969-12-29T00:00:00.000Z");
    }

    #[test]
    fn csv_quotes_fields_that_need_it() {
        let mut p = pr(1);
        p.title = "Fix \"a\", b".into();
        p.labels = vec!["x".into(), "y".into()];
        let csv = to_csv(&[one(&p)]);
        let mut lines = csv.split("\r\n");
        assert_eq!(lines.next(), Some(CSV_HEADER.join(",").as_str()));
        let row = lines.next().unwrap();
        assert!(
            row.starts_with("o/r,1,\"Fix \"\"a\"\", b\",ann,false,,open,"),
            "{row}"
        );
        assert!(row.ends_with(",false,,false,false,x;y"), "{row}");
    }

    #[test]
    fn summary_counts_merged_prs_in_the_window() {
        let window = Window {
            since: T0,
            until: T0 + 2 * WEEK_MS,
        };
        let mut a = pr(1);
        a.state = "merged".into();
        a.first_review_at = Some(T0 + H);
        a.merged_at = Some(T0 + 2 * H);
        a.reviews = 1;
        let mut b = pr(2);
        b.state = "merged".into();
        b.merged_at = Some(T0 + WEEK_MS + 4 * H);
        b.reverted = true;
        b.is_hotfix = true;
        b.author = Some("bob".into());
        let mut c = pr(3);
        c.state = "closed".into();
        c.closed_at = Some(T0 + H);
        let mut old = pr(4);
        old.state = "merged".into();
        old.created_at = T0 - WEEK_MS;
        old.merged_at = Some(T0 - 1);
        let teams = teams(Some(("core", &["bob"])));
        let resolved = teams.resolve(&[]);
        let rows = [a, b, c, old];
        let s = summarize(
            Some("o/r"),
            None,
            &rows,
            vec![("bob".into(), 3), ("cy".into(), 1)],
            window,
            &resolved,
        );
        assert_eq!(
            s.pull_requests,
            PullCounts {
                opened: 3,
                merged: 2,
                closed_without_merge: 1
            }
        );
        assert_eq!(s.cycle_time.count, 2);
        // Cycle times 2 h and 172 h: median 87 h, p75 129.5 h, p90 155 h.
        assert_eq!(s.cycle_time.median_hours, Some(87.0));
        assert_eq!(s.cycle_time.p75_hours, Some(129.5));
        assert_eq!(s.cycle_time.p90_hours, Some(155.0));
        assert_eq!(
            (s.pickup_time.count, s.pickup_time.median_hours),
            (1, Some(1.0))
        );
        assert_eq!(s.throughput_per_week, 1.0);
        assert_eq!(s.revert_rate, Some(0.5));
        assert_eq!(
            s.revert_rate_by_author,
            [
                AuthorReverts {
                    author: "ann".into(),
                    merged: 1,
                    reverted: 0,
                    revert_rate: 0.0
                },
                AuthorReverts {
                    author: "bob".into(),
                    merged: 1,
                    reverted: 1,
                    revert_rate: 1.0
                },
            ]
        );
        assert_eq!(s.hotfix_rate, Some(0.5));
        assert_eq!(s.review_coverage, Some(0.5));
        assert_eq!(s.author_match_rate, Some(0.5), "bob's one of two");
        // b: Monday 00:00 → Monday 00:00 a week later: five days of 8 working hours.
        assert_eq!(s.working_time.cycle_time.count, 2);
        assert_eq!(s.working_time.cycle_time.p90_hours, Some(36.0));
        assert_eq!(s.weekly[1].median_cycle_working_hours, Some(40.0));
        assert_eq!(s.working_time.calendar.working_hours, "09:00-17:00");

        let core = summarize(Some("o/r"), Some(0), &rows, vec![], window, &resolved);
        assert_eq!(core.team.as_deref(), Some("core"));
        assert_eq!(
            core.pull_requests,
            PullCounts {
                opened: 1,
                merged: 1,
                closed_without_merge: 0
            }
        );
        assert_eq!(core.author_match_rate, Some(0.5), "before the team filter");
        assert_eq!(s.reviews_per_reviewer.average, Some(2.0));
        assert_eq!(s.weekly.len(), 2);
        assert_eq!(
            (
                s.weekly[0].week_start.as_str(),
                s.weekly[0].opened,
                s.weekly[0].merged
            ),
            ("2024-01-01", 3, 1)
        );
        assert_eq!(s.weekly[1].median_cycle_hours, Some(172.0));
        assert_eq!(s.weekly[0].median_cycle_working_hours, Some(0.0));
    }
}
