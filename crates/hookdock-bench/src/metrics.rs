//! `hookdock-bench metrics`: the pull request metrics summary on a large SQLite database.
//!
//! Generates (deterministically) pull requests, reviews, review activity and members straight
//! into a fresh hookdock database (migrated by hookdock itself), in one transaction of
//! multi-row inserts, with rows shaped as the metrics handler writes them. Then it times
//! hookdock's own summary function ([`hookdock::metrics::load_summary`], exactly what
//! `GET /api/v1/metrics/summary` runs after parsing its parameters) for one repository and a
//! window, next to a baseline in the same process and on the same database: a plain
//! `SELECT COUNT(*)` of the rows the summary reads (the repository's pull requests created,
//! merged or closed in the window).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use hookdock::config::{MetricsSettings, TeamSettings};
use hookdock::metrics::{SummaryRequest, Teams, Window};
use hookdock::store::{PullFilter, Store, StoreOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
/// 2026-11-01T00:00:00Z: the end of the generated year and of the measured window.
const UNTIL: i64 = 1_793_491_200_000;

#[derive(clap::Args, Debug, Clone)]
pub struct MetricsArgs {
    /// Pull requests to generate.
    #[arg(long, default_value_t = 100_000)]
    pulls: usize,
    /// Reviews per pull request (500,000 reviews for the default 100,000 pull requests).
    #[arg(long, default_value_t = 5)]
    reviews_per_pull: usize,
    /// Repositories; the measured one (`bench/repo-0`) holds `--hot-share` of the pull requests.
    #[arg(long, default_value_t = 10)]
    repos: usize,
    /// Share of all pull requests in the measured repository.
    #[arg(long, default_value_t = 0.4)]
    hot_share: f64,
    /// Days of history the pull requests are spread over (ending 2026-11-01).
    #[arg(long, default_value_t = 365)]
    days: i64,
    /// The summary's window in days.
    #[arg(long, default_value_t = 90)]
    window_days: i64,
    /// Measured runs of each query (after two warm-up runs).
    #[arg(long, default_value_t = 21)]
    runs: usize,
    /// The target for the summary's median, in milliseconds.
    #[arg(long, default_value_t = 200)]
    target_ms: u64,
    /// Keep the database (its path is printed).
    #[arg(long)]
    keep: bool,
}

/// splitmix64: deterministic data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: i64) -> i64 {
        i64::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

const USERS: i64 = 200;
const BOTS: i64 = 5;

struct Pull {
    repo: usize,
    number: i64,
    author: i64,
    created: i64,
    first_commit: i64,
    state: &'static str,
    merged: Option<i64>,
    closed: Option<i64>,
    reviews: Vec<(i64, i64)>,
    additions: i64,
    deletions: i64,
}

fn generate(args: &MetricsArgs) -> Vec<Pull> {
    let mut rng = Rng(0x5EED);
    let mut next_number = vec![1_i64; args.repos.max(1)];
    let hot = (args.hot_share.clamp(0.0, 1.0) * 1000.0) as i64;
    let span = args.days.max(1) * DAY;
    (0..args.pulls)
        .map(|_| {
            let repo = if args.repos <= 1 || rng.below(1000) < hot {
                0
            } else {
                1 + usize::try_from(rng.below(i64::try_from(args.repos - 1).unwrap_or(1)))
                    .unwrap_or(0)
            };
            let number = next_number[repo];
            next_number[repo] += 1;
            let author = 1 + rng.below(USERS);
            let created = UNTIL - span + rng.below(span);
            let first_commit = created - rng.below(48 * HOUR);
            let mut reviews: Vec<(i64, i64)> = (0..args.reviews_per_pull)
                .map(|_| {
                    let reviewer = 1 + rng.below(USERS + BOTS);
                    (reviewer, created + rng.below(96 * HOUR))
                })
                .collect();
            reviews.sort_by_key(|r| r.1);
            let last = reviews.last().map_or(created, |r| r.1);
            let (state, merged, closed) = match rng.below(100) {
                0..=84 => {
                    let at = last + rng.below(48 * HOUR);
                    ("merged", Some(at), Some(at))
                }
                85..=89 => ("closed", None, Some(last + rng.below(48 * HOUR))),
                _ => ("open", None, None),
            };
            let (additions, deletions) = (rng.below(800), rng.below(300));
            Pull {
                repo,
                number,
                author,
                created,
                first_commit,
                state,
                merged,
                closed,
                reviews,
                additions,
                deletions,
            }
        })
        .collect()
}

fn repo_name(i: usize) -> String {
    format!("bench/repo-{i}")
}

/// Inserts `rows` with multi-row `INSERT`s of `per_statement` rows.
async fn insert_rows<T>(
    tx: &mut sqlx::SqliteConnection,
    head: &str,
    rows: &[T],
    per_statement: usize,
    mut push: impl FnMut(sqlx::query_builder::Separated<'_, Sqlite, &'static str>, &T),
) -> anyhow::Result<()> {
    for chunk in rows.chunks(per_statement) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(head);
        q.push_values(chunk, &mut push);
        q.build().execute(&mut *tx).await?;
    }
    Ok(())
}

async fn load(pool: &SqlitePool, pulls: &[Pull]) -> anyhow::Result<(usize, usize)> {
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    let members: Vec<i64> = (1..=USERS + BOTS).collect();
    insert_rows(
        &mut conn,
        "INSERT INTO members (github_id, login, name, is_bot, first_seen, updated) ",
        &members,
        500,
        |mut b, id| {
            let bot = *id > USERS;
            b.push_bind(*id)
                .push_bind(if bot {
                    format!("bot-{id}[bot]")
                } else {
                    format!("user-{id}")
                })
                .push_bind(None::<String>)
                .push_bind(i64::from(bot))
                .push_bind(0_i64)
                .push_bind(0_i64);
        },
    )
    .await?;
    sqlx::query(
        "INSERT INTO member_logins (login_lower, github_id, seen) \
         SELECT LOWER(login), github_id, updated FROM members",
    )
    .execute(&mut *conn)
    .await?;
    insert_rows(
        &mut conn,
        "INSERT INTO pull_requests (repo, number, github_id, author_id, title, state, draft, \
         base_ref, head_ref, head_sha, created_at, first_commit_at, first_review_at, merged_at, \
         closed_at, additions, deletions, changed_files, commits, labels, updated_at, \
         size_updated_at) ",
        pulls,
        800,
        |mut b, p| {
            let first_review = p
                .reviews
                .iter()
                .filter(|(reviewer, _)| *reviewer != p.author && *reviewer <= USERS)
                .map(|r| r.1)
                .min();
            let updated = p.closed.unwrap_or(p.created);
            b.push_bind(repo_name(p.repo))
                .push_bind(p.number)
                .push_bind(p.repo as i64 * 10_000_000 + p.number)
                .push_bind(p.author)
                .push_bind(format!("Change {}", p.number))
                .push_bind(p.state)
                .push_bind(0_i64)
                .push_bind("main")
                .push_bind(format!("feature-{}", p.number))
                .push_bind(format!("{:040x}", p.number))
                .push_bind(p.created)
                .push_bind(p.first_commit)
                .push_bind(first_review)
                .push_bind(p.merged)
                .push_bind(p.closed)
                .push_bind(p.additions)
                .push_bind(p.deletions)
                .push_bind(1 + p.additions / 50)
                .push_bind(1 + p.additions / 100)
                .push_bind("[]")
                .push_bind(updated)
                .push_bind(updated);
        },
    )
    .await?;
    let mut reviews = Vec::new();
    let mut id = 1_i64;
    for p in pulls {
        for (reviewer, at) in &p.reviews {
            reviews.push((id, p, *reviewer, *at));
            id += 1;
        }
    }
    insert_rows(
        &mut conn,
        "INSERT INTO reviews (github_id, repo, pr_number, reviewer_id, state, submitted_at) ",
        &reviews,
        2000,
        |mut b, (id, p, reviewer, at)| {
            b.push_bind(*id)
                .push_bind(repo_name(p.repo))
                .push_bind(p.number)
                .push_bind(*reviewer)
                .push_bind(if id % 3 == 0 { "commented" } else { "approved" })
                .push_bind(*at);
        },
    )
    .await?;
    insert_rows(
        &mut conn,
        "INSERT INTO pr_activity (kind, source_id, repo, pr_number, actor_id, at, counts) ",
        &reviews,
        2000,
        |mut b, (id, p, reviewer, at)| {
            let counts = *reviewer != p.author && *reviewer <= USERS;
            b.push_bind("review")
                .push_bind(*id)
                .push_bind(repo_name(p.repo))
                .push_bind(p.number)
                .push_bind(*reviewer)
                .push_bind(*at)
                .push_bind(i64::from(counts));
        },
    )
    .await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    sqlx::query("ANALYZE").execute(&mut *conn).await?;
    Ok((pulls.len(), reviews.len()))
}

/// Median (the load bench's, [`crate::report::median`]) and nearest-rank p90 of the
/// durations, in milliseconds.
fn stats(samples: Vec<Duration>) -> (f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let p90 = ms
        .get(((ms.len().saturating_sub(1)) as f64 * 0.9).round() as usize)
        .copied()
        .unwrap_or(f64::NAN);
    (crate::report::median(&ms), p90)
}

async fn time<F, Fut, T>(runs: usize, mut f: F) -> anyhow::Result<(f64, f64, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    for _ in 0..2 {
        f().await?;
    }
    let mut samples = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        let out = f().await?;
        samples.push(start.elapsed());
        last = Some(out);
    }
    let (median, p90) = stats(samples);
    Ok((median, p90, last.context("at least one measured run")?))
}

/// Two teams of 20 members each with a Berlin working-hours calendar, so the summary does
/// the team and calendar work too.
fn teams() -> anyhow::Result<Teams> {
    let weekdays: Vec<String> = ["mon", "tue", "wed", "thu", "fri"]
        .iter()
        .map(|d| (*d).to_owned())
        .collect();
    let team = |name: &str, first: i64| TeamSettings {
        name: name.to_owned(),
        members: (first..first + 20).map(|i| format!("User-{i}")).collect(),
        timezone: Some("Europe/Berlin".to_owned()),
        working_days: None,
        working_hours: None,
        holidays: Some(vec!["2026-10-03".to_owned(), "2026-12-25".to_owned()]),
    };
    let settings = MetricsSettings {
        enabled: true,
        hotfix_branch_prefixes: vec![],
        hotfix_labels: vec![],
        count_bot_reviews: false,
        fetch_commits: true,
        timezone: "UTC".to_owned(),
        working_days: weekdays,
        working_hours: "09:00-17:00".to_owned(),
        holidays: vec![],
        teams: vec![team("core", 1), team("web", 21)],
    };
    Ok(Teams::from_settings(&settings)?)
}

pub fn run(args: MetricsArgs) -> anyhow::Result<std::process::ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: MetricsArgs) -> anyhow::Result<std::process::ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("hookdock-bench-metrics-")
        .tempdir()
        .context("creating a data directory")?;
    let db: PathBuf = dir.path().join("hookdock.db");
    let url = format!("sqlite://{}", db.display());
    println!(
        "metrics summary benchmark: {} pull requests, {} reviews each, {} repositories ({}% in bench/repo-0), {} days; summary of bench/repo-0 over {} days",
        args.pulls,
        args.reviews_per_pull,
        args.repos,
        (args.hot_share * 100.0).round(),
        args.days,
        args.window_days
    );
    let store = Store::connect(&url, StoreOptions::default())
        .await
        .context("opening the store")?;
    store.migrate().await.context("migrating")?;

    let started = Instant::now();
    let pulls = generate(&args);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&db)
                .busy_timeout(Duration::from_secs(30)),
        )
        .await
        .context("opening the database for loading")?;
    let (n_pulls, n_reviews) = load(&pool, &pulls).await.context("loading")?;
    drop(pulls);
    let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    println!(
        "generated and loaded {n_pulls} pull requests, {n_reviews} reviews and {n_reviews} review activity rows in {:.1} s ({:.0} MB)",
        started.elapsed().as_secs_f64(),
        size as f64 / 1e6
    );

    let window = Window {
        since: UNTIL - args.window_days * DAY,
        until: UNTIL,
    };
    let repo = repo_name(0);
    // The baseline counts the rows the summary reads, through the same indexes.
    let (base_median, base_p90, rows) = time(args.runs, || {
        let pool = &pool;
        let repo = repo.as_str();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM (\
                 SELECT id FROM pull_requests WHERE repo = ?1 AND created_at >= ?2 AND created_at < ?3 \
                 UNION SELECT id FROM pull_requests WHERE repo = ?1 AND merged_at >= ?2 AND merged_at < ?3 \
                 UNION SELECT id FROM pull_requests WHERE repo = ?1 AND merged_at IS NULL \
                 AND closed_at >= ?2 AND closed_at < ?3)",
            )
            .bind(repo)
            .bind(window.since)
            .bind(window.until)
            .fetch_one(pool)
            .await?;
            Ok(n)
        }
    })
    .await?;

    let teams = teams()?;
    let mut ok = true;
    println!(
        "\n{:<44} {:>10} {:>10} {:>14}",
        "query", "median ms", "p90 ms", "median/baseline"
    );
    println!(
        "{:<44} {:>10.2} {:>10.2} {:>14}",
        format!("baseline: SELECT COUNT(*) ({rows} rows)"),
        base_median,
        base_p90,
        "1.0"
    );
    for (label, team) in [("summary", None), ("summary team=core", Some(0))] {
        let request = SummaryRequest {
            repo: Some(repo.clone()),
            team,
            window,
        };
        let (median, p90, summary) = time(args.runs, || {
            let (store, teams, request) = (&store, &teams, &request);
            async move { Ok(hookdock::metrics::load_summary(store, teams, request).await?) }
        })
        .await?;
        println!(
            "{:<44} {:>10.2} {:>10.2} {:>14.1}",
            format!(
                "{label} ({} merged, {} reviews)",
                summary.pull_requests.merged, summary.reviews_per_reviewer.reviews
            ),
            median,
            p90,
            median / base_median
        );
        if team.is_none() && median > args.target_ms as f64 {
            ok = false;
        }
    }
    // Where the summary's time goes: its two reads, and the computation on rows in memory.
    let filter = PullFilter {
        repo: Some(repo.clone()),
        created_from: Some(window.since),
        created_to: Some(window.until),
        ended_from: Some(window.since),
        ended_to: Some(window.until),
        ..PullFilter::default()
    };
    let (median, p90, rows) = time(args.runs, || {
        let (store, filter) = (&store, &filter);
        async move { Ok(store.pull_requests_for_summary(filter).await?) }
    })
    .await?;
    println!(
        "{:<44} {:>10.2} {:>10.2} {:>14.1}",
        format!("  part: read pull requests ({} rows)", rows.len()),
        median,
        p90,
        median / base_median
    );
    let (median, p90, reviewers) = time(args.runs, || {
        let (store, repo) = (&store, repo.as_str());
        async move {
            Ok(store
                .reviews_per_reviewer(Some(repo), None, window.since, window.until)
                .await?)
        }
    })
    .await?;
    println!(
        "{:<44} {:>10.2} {:>10.2} {:>14.1}",
        format!(
            "  part: reviews per reviewer ({} reviewers)",
            reviewers.len()
        ),
        median,
        p90,
        median / base_median
    );
    let known = store.known_logins(&teams.all_logins()).await?;
    let resolved = teams.resolve(&known);
    let (median, p90, _) = time(args.runs, || {
        let (rows, reviewers, resolved, repo) = (&rows, &reviewers, &resolved, repo.as_str());
        async move {
            Ok(hookdock::metrics::summarize(
                Some(repo),
                None,
                rows,
                reviewers.clone(),
                window,
                resolved,
            ))
        }
    })
    .await?;
    println!(
        "{:<44} {:>10.2} {:>10.2} {:>14.1}",
        "  part: summarize the rows in memory",
        median,
        p90,
        median / base_median
    );
    println!(
        "\ntarget: summary median under {} ms: {}",
        args.target_ms,
        if ok { "met" } else { "NOT met" }
    );
    pool.close().await;
    store.close().await;
    if args.keep {
        let kept = dir.keep();
        println!("database kept: {}", kept.join("hookdock.db").display());
    }
    Ok(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_data_is_deterministic_and_coherent() {
        let args = MetricsArgs {
            pulls: 500,
            reviews_per_pull: 5,
            repos: 10,
            hot_share: 0.4,
            days: 365,
            window_days: 90,
            runs: 1,
            target_ms: 200,
            keep: false,
        };
        let a = generate(&args);
        let b = generate(&args);
        assert_eq!(a.len(), 500);
        assert_eq!(a.iter().map(|p| p.reviews.len()).sum::<usize>(), 2500);
        let hot = a.iter().filter(|p| p.repo == 0).count();
        assert!((150..250).contains(&hot), "{hot}");
        for (p, q) in a.iter().zip(&b) {
            assert_eq!((p.repo, p.number, p.created), (q.repo, q.number, q.created));
            assert!(p.first_commit <= p.created);
            assert!(p.created >= UNTIL - 365 * DAY && p.created < UNTIL);
            assert!(p.merged.is_none_or(|m| m >= p.created));
            assert!(p.reviews.windows(2).all(|w| w[0].1 <= w[1].1));
        }
    }

    #[test]
    fn median_and_p90() {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect();
        assert_eq!(stats(ms(&[5, 1, 3])), (3.0, 5.0));
        let (median, p90) = stats(ms(&(1..=11).collect::<Vec<_>>()));
        assert_eq!((median, p90), (6.0, 10.0));
    }
}
