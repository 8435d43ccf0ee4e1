//! Command-line interface: clap types and what each subcommand does with the library.

/// `println!` for a command's output: a closed stdout (`hookdock events list | head`) ends the
/// command quietly instead of panicking; any other write error is the command's error.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))?
    };
}

mod hooks;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hookdock::app::store_options;
use hookdock::clock::{Clock, SystemClock};
use hookdock::config::{ConfigError, Settings, Sources};
use hookdock::github::{Github, GithubConfig};
use hookdock::ingest::ContentType;
use hookdock::send::{Outgoing, embedded_payload, send};
use hookdock::store::{
    EventFilter, EventPage, EventStatus, ReplayMode, Store, redact_url, rfc3339, sqlite_file,
};
use hookdock::{App, events, handlers::HandlerRegistry, telemetry};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "hookdock", version, about = "Self-hosted GitHub webhook hub")]
pub struct Cli {
    /// Config file (default: ./hookdock.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Database URL: sqlite://PATH or postgres://… [env: HOOKDOCK_DATABASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: webhook ingest, API and workers (migrates the database first).
    Serve {
        /// Address to listen on [env: HOOKDOCK_LISTEN] [default: 127.0.0.1:3000]
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Sign a payload the way GitHub does and POST it; prints the answer.
    Send(SendArgs),
    /// Inspect, replay and release stored events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Validate the configuration and check the database, then exit.
    CheckConfig,
    /// Delete done and ignored events older than the retention (or --days) now.
    Purge {
        /// Age in days beyond which done and ignored events go (default: retention.done_days).
        #[arg(long)]
        days: Option<u32>,
    },
    /// hookdock's webhooks on repositories: list, install, uninstall, rotate-secret, ping, check.
    #[command(subcommand)]
    Repos(hooks::ReposCommand),
    /// hookdock's webhooks on organizations.
    #[command(subcommand)]
    Orgs(hooks::OrgsCommand),
    /// Ask GitHub to redeliver the deliveries it failed to hand over (and hookdock lacks).
    Redeliver {
        /// How far back to look, e.g. 30m, 24h, 3d (GitHub keeps 3 days; 7 on Enterprise Server).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Pull request metrics.
    #[command(subcommand)]
    Metrics(MetricsCommand),
    /// The same as `metrics backfill`.
    Backfill(BackfillArgs),
    /// Reseal every stored secret under the current key (after changing secret_key, or with a
    /// newly generated key for an embedded install).
    RotateKey,
}

#[derive(Debug, Subcommand)]
enum MetricsCommand {
    /// Recompute members, pull requests and reviews from the stored events, oldest first
    /// (after a change of definitions or of handlers.metrics settings).
    Rebuild,
    /// Load a repository's pull requests with their reviews, comments, commits and draft
    /// changes through GitHub's REST API (with HOOKDOCK_GITHUB_TOKEN); running it again after
    /// an interruption resumes where it stopped.
    Backfill(BackfillArgs),
}

#[derive(Debug, Args)]
struct BackfillArgs {
    /// owner/repo
    repo: String,
    /// Pull requests updated in this span, e.g. 90d, 12h.
    #[arg(long, default_value = "90d")]
    since: String,
}

#[derive(Debug, Args)]
struct SendArgs {
    /// Webhook URL, e.g. http://127.0.0.1:3000/api/v1/webhooks/github
    #[arg(long, default_value = "http://127.0.0.1:3000/api/v1/webhooks/github", value_parser = http_url)]
    url: String,
    /// Secret to sign with; without it the delivery is sent unsigned.
    #[arg(long, env = "HOOKDOCK_WEBHOOK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// X-GitHub-Event (taken from the fixture name when --fixture is used).
    #[arg(long)]
    event: Option<String>,
    /// A JSON payload file, sent byte for byte.
    #[arg(long, conflicts_with = "fixture", required_unless_present = "fixture")]
    file: Option<PathBuf>,
    /// An embedded example: ping, push, pull_request.opened, issues.opened, issue_comment.created.
    #[arg(long)]
    fixture: Option<String>,
    /// Delivery id to send (default: a fresh GUID); reuse one to see deduplication.
    #[arg(long)]
    delivery_id: Option<String>,
    /// Send as application/x-www-form-urlencoded (payload=…) instead of JSON.
    #[arg(long)]
    form: bool,
    /// X-GitHub-Hook-ID to send.
    #[arg(long)]
    hook_id: Option<u64>,
}

/// `--url`: an absolute http(s) URL, as clap checks it before anything is sent.
fn http_url(value: &str) -> Result<String, String> {
    if hookdock::config::is_http_url(value) {
        Ok(value.to_owned())
    } else {
        Err(
            "give an absolute http(s) URL, e.g. http://127.0.0.1:3000/api/v1/webhooks/github"
                .to_owned(),
        )
    }
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// List events, newest first.
    List {
        /// Only events in this status: pending, processing, done, failed, dead, ignored or
        /// replay_suspected.
        #[arg(long)]
        status: Option<String>,
        /// Event name, or name.action
        #[arg(long)]
        event: Option<String>,
        /// owner/repo
        #[arg(long)]
        repo: Option<String>,
        /// Only the event with this delivery id (X-GitHub-Delivery).
        #[arg(long)]
        delivery_id: Option<String>,
        /// Events per page, 1 to 10,000.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Show events older than this id.
        #[arg(long)]
        before: Option<i64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one event with its jobs and history (JSON).
    Show {
        id: i64,
        /// Print the stored body instead, byte for byte.
        #[arg(long)]
        payload: bool,
    },
    /// Run an event's handlers again (or, with --all-dead, every dead job).
    Replay {
        #[arg(required_unless_present = "all_dead")]
        id: Option<i64>,
        /// Only re-run jobs that are dead.
        #[arg(long)]
        dead_only: bool,
        /// Run the automations now and print what they would write to GitHub, writing nothing.
        #[arg(long, conflicts_with_all = ["dead_only", "all_dead"])]
        dry_run: bool,
        /// Replay the dead jobs of every event.
        #[arg(long, conflicts_with = "id")]
        all_dead: bool,
    },
    /// Release an event held as replay_suspected after judging it genuine.
    Release { id: i64 },
}

/// Writing a command's output failed (see [`out!`]).
#[derive(Debug, thiserror::Error)]
#[error("writing to stdout: {0}")]
pub struct StdoutError(std::io::Error);

impl StdoutError {
    /// Whatever reads the output went away (`| head`): not hookdock's failure.
    pub fn is_closed(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// One line of output (what [`out!`] calls).
pub(crate) fn write_out(line: std::fmt::Arguments) -> Result<(), StdoutError> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}").map_err(StdoutError)
}

/// A value as indented JSON, one document on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?;
    out!("{text}");
    Ok(())
}

impl From<StdoutError> for Failure {
    fn from(e: StdoutError) -> Self {
        Failure::Other(e.into())
    }
}

/// How a command failed: configuration errors exit 2, everything else 1.
pub enum Failure {
    Config(ConfigError),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

impl From<hookdock::store::StoreError> for Failure {
    fn from(e: hookdock::store::StoreError) -> Self {
        Failure::Other(e.into())
    }
}

impl From<hookdock::send::SendError> for Failure {
    fn from(e: hookdock::send::SendError) -> Self {
        Failure::Other(e.into())
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

impl Cli {
    fn settings(&self, listen: Option<&String>) -> Result<Settings, ConfigError> {
        let mut sources = Sources::from_process(self.config.clone());
        if let Some(url) = &self.database_url {
            sources = sources.set("database_url", url.as_str());
        }
        if let Some(listen) = listen {
            sources = sources.set("listen", listen.as_str());
        }
        Settings::load(&sources)
    }
}

/// A SQLite database file named by `database_url` that does not exist yet, in words (`None`
/// when it exists, or for PostgreSQL): opening it would create an empty one, and its directory.
fn missing_database(settings: &Settings) -> Option<String> {
    let path = sqlite_file(&settings.database_url)?;
    if path.exists() {
        return None;
    }
    Some(if path.is_relative() {
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "?".to_owned());
        format!(
            "{} (database_url, relative to the current directory, {cwd})",
            path.display()
        )
    } else {
        format!("{} (database_url)", path.display())
    })
}

/// Whether a command that works on the store (not `serve` or `migrate`, which always create
/// it) may start a new SQLite database: those that bring data in from GitHub (a first install
/// or backfill may come before the first `serve`). The others work on a database hookdock
/// already uses; in a directory without it, they would find an empty new one and report
/// nothing, instead of the operator's data.
fn may_create_database(command: &Command) -> bool {
    matches!(
        command,
        Command::Repos(hooks::ReposCommand::Install { .. })
            | Command::Orgs(hooks::OrgsCommand::Install { .. })
            | Command::Backfill(_)
            | Command::Metrics(MetricsCommand::Backfill(_))
    )
}

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database_url, store_options(settings))
        .await
        .context("opening the database")?;
    if !store.migrations_current().await? {
        store.migrate().await.context("migrating the database")?;
    }
    Ok(store)
}

pub async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Serve { listen } => {
            let settings = hooks::with_cli_token(cli.settings(listen.as_ref())?);
            telemetry::init_tracing(&settings.log, settings.log_format);
            let app = App::build(settings).await.context("starting hookdock")?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone())?);
            app.run_until_stopped(shutdown)
                .await
                .context("running hookdock")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let settings = cli.settings(None)?;
            let store = Store::connect(&settings.database_url, store_options(&settings))
                .await
                .context("opening the database")?;
            let applied = store.migrate().await.context("migrating the database")?;
            out!("{applied} migration(s) applied; schema is current");
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig => {
            let settings = cli.settings(None)?;
            out!("configuration is valid");
            out!("  listen:          {}", settings.listen);
            out!("  database_url:    {}", redact_url(&settings.database_url));
            out!(
                "  webhook secrets: global {}, scoped {}",
                if settings.webhook_secret.is_some() {
                    "set"
                } else {
                    "not set"
                },
                settings.webhook_secrets.len()
            );
            out!("  allow_unsigned:  {}", settings.allow_unsigned);
            out!(
                "  admin_token:     {}",
                if settings.admin_token.is_some() {
                    "set"
                } else {
                    "not set (API answers 401)"
                }
            );
            out!("  workers:         {}", settings.queue.workers);
            let handlers = HandlerRegistry::from_settings(&settings.handlers).names();
            out!("  handlers:        {}", handlers.join(", "));
            match missing_database(&settings) {
                Some(missing) => out!(
                    "  database:        none yet at {missing}; `hookdock serve` or `hookdock migrate` creates it"
                ),
                None => {
                    let store = Store::connect(&settings.database_url, store_options(&settings))
                        .await
                        .context("the database is not reachable")?;
                    let current = store
                        .migrations_current()
                        .await
                        .context("reading the schema version")?;
                    out!(
                        "  database:        reachable, migrations {}",
                        if current {
                            "current"
                        } else {
                            "pending (run `hookdock migrate` or `serve`)"
                        }
                    );
                    store.close().await;
                }
            }
            if settings.has_no_webhook_secret() && !settings.allow_unsigned {
                out!("warning: no webhook secret is set; every delivery will be refused");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => send_command(args).await,
        command => {
            let settings = cli.settings(None)?;
            if !may_create_database(command)
                && let Some(missing) = missing_database(&settings)
            {
                return Err(anyhow::anyhow!(
                    "no hookdock database at {missing}: run this where `hookdock serve` runs, or \
                     give its database with --database-url or HOOKDOCK_DATABASE_URL"
                )
                .into());
            }
            let store = open_store(&settings).await?;
            let result = store_command(command, settings, &store).await;
            store.close().await;
            result
        }
    }
}

/// The commands that work on the database.
async fn store_command(
    command: &Command,
    settings: Settings,
    store: &Store,
) -> Result<ExitCode, Failure> {
    match command {
        Command::Purge { days } => {
            let days = days.unwrap_or(settings.retention.done_days);
            let cutoff = hookdock::store::now_ms() - i64::from(days) * 86_400_000;
            let n = store.purge_finished(cutoff).await?;
            out!("purged {n} done/ignored event(s) older than {days} day(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Events(command) => events_command(command, &settings, store).await,
        Command::Repos(command) => hooks::repos(command, settings, store).await,
        Command::Orgs(command) => hooks::orgs(command, settings, store).await,
        Command::Redeliver { since, json } => hooks::redeliver(since, *json, settings, store).await,
        Command::RotateKey => hooks::rotate_key_command(&settings, store).await,
        Command::Metrics(MetricsCommand::Rebuild) => {
            let report = hookdock::handlers::metrics::rebuild(store, &settings.handlers.metrics)
                .await
                .map_err(|e| anyhow::anyhow!("metrics rebuild failed: {e}"))?;
            out!(
                "metrics rebuilt from {} event(s) and {} API answer(s); {} skipped",
                report.events,
                report.snapshots,
                report.skipped
            );
            if let Some(error) = &report.first_error {
                out!("first skipped: {error}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics(MetricsCommand::Backfill(args)) | Command::Backfill(args) => {
            backfill_command(&args.repo, &args.since, settings, store).await
        }
        Command::Serve { .. } | Command::Migrate | Command::CheckConfig | Command::Send(_) => {
            Err(anyhow::anyhow!("this command does not run on an open database").into())
        }
    }
}

/// `metrics backfill`: progress on stderr (one line per 10 pull requests, or a line redrawn in
/// place on a terminal), the summary on stdout. Refused while a backfill of the repository runs
/// elsewhere; Ctrl-C or SIGTERM stops it, recorded as interrupted.
async fn backfill_command(
    repo: &str,
    since: &str,
    settings: Settings,
    store: &Store,
) -> Result<ExitCode, Failure> {
    use hookdock::handlers::backfill::{Backfill, BackfillProgress, claim};
    use std::io::{IsTerminal, Write};

    let span = hookdock::config::parse_span(since).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let settings = hooks::with_cli_token(settings);
    let Some(token) = settings.github_token.clone() else {
        return Err(anyhow::anyhow!(
            "metrics backfill needs a GitHub token: set HOOKDOCK_GITHUB_TOKEN (or github_token in the config file, or sign in with `gh auth login`)"
        )
        .into());
    };
    let clock = std::sync::Arc::new(hookdock::clock::SystemClock);
    let github = hookdock::github::Github::new(
        hookdock::github::GithubConfig::from_settings(&settings),
        clock.clone(),
    )
    .map_err(anyhow::Error::from)?;
    let client = github.client(Some(token));
    let backfill = Backfill {
        store,
        github: &client,
        clock: clock.as_ref(),
        settings: &settings.handlers.metrics,
    };
    let terminal = std::io::stderr().is_terminal();
    let mut progress = |p: BackfillProgress| {
        let mut err = std::io::stderr().lock();
        let line = match p {
            BackfillProgress::Listed { pulls } => {
                if !terminal {
                    return;
                }
                format!("backfill {repo}: listing, {pulls} pull requests")
            }
            BackfillProgress::Pulls { done, total } => {
                if !terminal && done % 10 != 0 && done != total {
                    return;
                }
                format!("backfill {repo}: {done}/{total} pull requests")
            }
        };
        if terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
    };
    // Listening from before the claim: a signal from then on is recorded as an interruption.
    let cancel = CancellationToken::new();
    let stop = tokio::spawn(stop_on_signal(cancel.clone())?);
    // One run per repository, whoever starts it: the API of any instance shows this one.
    let claimed = claim(store, clock.as_ref(), repo, since, "cli")
        .await
        .map_err(|e| anyhow::anyhow!("metrics backfill of {repo}: {e}"))?;
    let result = claimed.run(&backfill, span, &cancel, &mut progress).await;
    stop.abort();
    if terminal {
        eprintln!();
    }
    let report = result.map_err(|e| anyhow::anyhow!("metrics backfill of {repo}: {e}"))?;
    out!(
        "backfilled {}: {} pull request(s) updated in the last {since}: {} fetched, {} done by an earlier run; {} review(s) stored, {} pending or by deleted accounts left out; {} comment(s), {} commit(s), {} draft change(s) read",
        report.repo,
        report.listed,
        report.fetched,
        report.resumed,
        report.reviews,
        report.reviews_skipped,
        report.comments,
        report.commits,
        report.draft_changes
    );
    Ok(ExitCode::SUCCESS)
}

async fn send_command(args: &SendArgs) -> Result<ExitCode, Failure> {
    let (event, json) = match (&args.file, &args.fixture) {
        (Some(path), _) => {
            let event = args
                .event
                .clone()
                .ok_or(hookdock::send::SendError::MissingEvent)
                .map_err(anyhow::Error::from)?;
            let json =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            (event, json)
        }
        (None, Some(name)) => {
            let json = embedded_payload(name)
                .map_err(anyhow::Error::from)?
                .to_vec();
            let event = args
                .event
                .clone()
                .unwrap_or_else(|| name.split('.').next().unwrap_or(name).to_owned());
            (event, json)
        }
        (None, None) => return Err(anyhow::anyhow!("give --file FILE or --fixture NAME").into()),
    };
    let mut outgoing = Outgoing::new(&event, json, args.secret.clone());
    if let Some(id) = &args.delivery_id {
        outgoing.delivery_id = id.clone();
    }
    if args.form {
        outgoing.content_type = ContentType::Form;
    }
    outgoing.hook_id = args.hook_id;
    if outgoing.secret.is_none() {
        eprintln!("note: no --secret given; sending unsigned");
    }
    let answer = send(&args.url, &outgoing).await?;
    out!(
        "delivery {} ({event}) -> HTTP {}",
        outgoing.delivery_id,
        answer.status
    );
    out!("{}", answer.body);
    Ok(if (200..300).contains(&answer.status) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn events_command(
    command: &EventsCommand,
    settings: &Settings,
    store: &Store,
) -> Result<ExitCode, Failure> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let github = Github::new(GithubConfig::from_settings(settings), Arc::clone(&clock))
        .map_err(|e| anyhow::anyhow!(e))?;
    let (registry, automations) = hookdock::app::handler_registry(settings, &github, store, clock)
        .map_err(|e| anyhow::anyhow!(e))?;
    match command {
        EventsCommand::List {
            status,
            event,
            repo,
            delivery_id,
            limit,
            before,
            json,
        } => {
            let status = match status {
                Some(s) => Some(EventStatus::parse(s).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--status {s:?} is not a status; use one of {}",
                        EventStatus::ALL.map(|s| s.as_str()).join(", ")
                    )
                })?),
                None => None,
            };
            let (event, action) = match event
                .as_deref()
                .map(|e| e.split_once('.').map_or((e, None), |(a, b)| (a, Some(b))))
            {
                Some((e, a)) => (Some(e.to_owned()), a.map(str::to_owned)),
                None => (None, None),
            };
            let filter = EventFilter {
                delivery_id: delivery_id.clone(),
                status,
                event,
                action,
                repository: repo.clone(),
                before_id: *before,
                limit: *limit,
            };
            let EventPage {
                events: rows,
                next_before,
            } = store.list_events_page(&filter).await?;
            if *json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                let filtered = filter.delivery_id.is_some()
                    || filter.status.is_some()
                    || filter.event.is_some()
                    || filter.repository.is_some()
                    || filter.before_id.is_some();
                out!(
                    "{}",
                    if filtered {
                        "no events match these filters"
                    } else {
                        "no events stored"
                    }
                );
            } else {
                out!(
                    "{:>8}  {:<24}  {:<17}  {:<36}  {:<28}  REPOSITORY",
                    "ID",
                    "RECEIVED",
                    "STATUS",
                    "DELIVERY",
                    "EVENT"
                );
                for e in &rows {
                    out!(
                        "{:>8}  {:<24}  {:<17}  {:<36}  {:<28}  {}",
                        e.id,
                        rfc3339(e.received_at),
                        e.status,
                        e.delivery_id,
                        e.label(),
                        e.repository.as_deref().unwrap_or("-")
                    );
                }
                if let Some(id) = next_before {
                    out!("(more: --before {id})");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Show { id, payload } => {
            if *payload {
                use std::io::Write;
                let body = store.event_body(*id).await?;
                std::io::stdout()
                    .write_all(&body.bytes)
                    .context("writing to stdout")?;
            } else {
                let detail = store.event_detail(*id).await?;
                let mut value = serde_json::to_value(detail).unwrap_or_default();
                value["actions"] =
                    serde_json::to_value(store.event_actions(*id).await?).unwrap_or_default();
                print_json(&value)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Replay {
            id: Some(id),
            dry_run: true,
            ..
        } => {
            let Some(automations) = automations else {
                return Err(anyhow::anyhow!(
                    "a dry run replays the automations, which are off: set HOOKDOCK_GITHUB_TOKEN (and leave handlers.automations.enabled on)"
                )
                .into());
            };
            store.event_summary(*id).await?;
            let reports = automations
                .dry_run(*id)
                .await
                .map_err(|e| anyhow::anyhow!("dry run of event {id} failed: {e}"))?;
            print_json(
                &serde_json::json!({ "event_id": id, "dry_run": true, "automations": reports }),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Replay {
            id,
            dead_only,
            all_dead,
            ..
        } => {
            let reports = if *all_dead {
                events::replay_all_dead(store, &registry).await?
            } else {
                let id = id.ok_or_else(|| anyhow::anyhow!("give an event id or --all-dead"))?;
                let mode = if *dead_only {
                    ReplayMode::DeadOnly
                } else {
                    ReplayMode::All
                };
                vec![events::replay(store, &registry, id, mode).await?]
            };
            for r in &reports {
                out!(
                    "event {}: queued [{}]{}; status {}",
                    r.event_id,
                    r.queued.join(", "),
                    if r.skipped_running.is_empty() {
                        String::new()
                    } else {
                        format!(", still running [{}]", r.skipped_running.join(", "))
                    },
                    r.status
                );
            }
            if reports.is_empty() {
                out!("no dead jobs");
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Release { id } => {
            let summary = store.event_summary(*id).await?;
            if summary.status != EventStatus::ReplaySuspected.as_str() {
                return Err(anyhow::anyhow!(
                    "event {id} is {}, not replay_suspected; use `hookdock events replay {id}`",
                    summary.status
                )
                .into());
            }
            let r = events::replay(store, &registry, *id, ReplayMode::All).await?;
            out!(
                "event {id} released: queued [{}]; status {}",
                r.queued.join(", "),
                r.status
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM; on Unix a second one ends the process at once (exit
/// status 130 for Ctrl-C, 143 for SIGTERM), as one who presses Ctrl-C twice means. That loses nothing
/// acknowledged, as `kill -9` does not: deliveries are answered only once on disk, and jobs
/// still running are claimed again when their leases lapse. The handlers are installed here,
/// before the returned future is first polled: a signal that arrives while that future waits
/// to be scheduled still ends the work in an orderly way, not with the default action (which
/// ends the process on the spot, recording nothing).
fn stop_on_signal(token: CancellationToken) -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("cannot listen for {name}"))
        };
        let mut int = listen(SignalKind::interrupt(), "Ctrl-C (SIGINT)")?;
        let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => tracing::info!("Ctrl-C received; shutting down (again to stop at once)"),
                _ = term.recv() => tracing::info!("SIGTERM received; shutting down (again to stop at once)"),
            }
            token.cancel();
            let status = tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            };
            tracing::warn!(
                "second stop signal: exiting at once; requests in flight go unanswered, running jobs are claimed again when their leases lapse"
            );
            std::process::exit(status);
        })
    }
    // Elsewhere only Ctrl-C, through tokio's portable listener (installed when first polled).
    #[cfg(not(unix))]
    {
        Ok(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Ctrl-C received; shutting down");
                token.cancel();
            }
        })
    }
}
