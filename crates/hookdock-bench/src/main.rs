//! `cargo run --release -p hookdock-bench`: loads hookdock's ingest endpoint over loopback with
//! signed, unique, real `pull_request.opened` deliveries, next to two minimal receivers on the
//! same stack (in-memory, and durable with group-commit `fdatasync`), and prints throughput,
//! latency percentiles, server CPU per request, peak RSS and the ratios to the baselines.
//!
//! Each server runs as a child process, fresh for each phase, so its CPU and memory are its
//! own. The load generator is this process, on one thread.
//!
//! The whole sequence runs `--rounds` times (3 by default), one round after another, so the
//! baselines and hookdock alternate in time and share the machine's conditions. The ratios to
//! the baselines are taken within each round, and the targets are checked against the medians
//! of the rounds (the highest round for memory): one short sample per target moves by ±10 %
//! from run to run on a small machine.
//!
//! `cargo run --release -p hookdock-bench -- metrics` times the pull request metrics summary
//! on a generated database instead (see `metrics.rs`), and `-- disk` the latency of this
//! machine's `fdatasync` at the open loop's rate and how fast it writes new page cache (see
//! `disk.rs`).

mod baseline;
mod disk;
mod large;
mod load;
mod metrics;
mod payload;
mod procfs;
mod report;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::load::{Deliveries, Window};
use crate::payload::PayloadTemplate;
use crate::report::{Phase, TargetResult};

/// Environment variable carrying the webhook secret to the baseline processes.
const SECRET_ENV: &str = "HOOKDOCK_BENCH_SECRET";
const SECRET: &str = "hookdock-bench-secret-0123456789";

#[derive(Parser)]
#[command(
    name = "hookdock-bench",
    about = "Load benchmark of hookdock's ingest endpoint against in-memory and durable baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand)]
enum Internal {
    /// Times the pull request metrics summary of one repository over 90 days on a generated
    /// SQLite database (100,000 pull requests, 500,000 reviews), against a COUNT(*) baseline.
    Metrics(metrics::MetricsArgs),
    /// Times `fdatasync` after appends of the payload's size at a fixed rate, in the directory
    /// where the servers keep their data: the floor of any durable receiver's latency here.
    /// First times writes into new page cache, which some VMs make slow.
    Disk(disk::DiskArgs),
    /// Peak memory of hookdock taking one `push` near GitHub's 25 MB cap (thousands of commits
    /// with file lists), storing only and with the default handlers.
    LargePush(large::LargePushArgs),
    /// Baseline receiver that keeps deliveries in memory only (started by the bench).
    #[command(hide = true)]
    BaselineMemory {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Baseline receiver with an append-only log and group commit (started by the bench).
    #[command(hide = true)]
    BaselineDurable {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        log: PathBuf,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Measured seconds of each phase (after the warm-up).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Warm-up seconds before each measured window (not counted).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Connections of the closed loop (and of the open loop's pool).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Requests per second of the open loop.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Rounds to run (at least 1). A round runs every target's phases once, in order, each on
    /// a fresh server; rounds follow one another, so baselines and hookdock interleave in time.
    /// Ratios are taken per round, and the targets are checked against the median of the
    /// rounds (the highest round for peak RSS).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Targets to run, comma-separated (default: memory,durable,hookdock).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Target>,
    /// Phases to run, comma-separated (default: both).
    #[arg(long, value_delimiter = ',')]
    phases: Vec<PhaseKind>,
    /// The hookdock binary [default: target/release/hookdock, built first with cargo].
    #[arg(long)]
    hookdock_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p hookdock` first.
    #[arg(long)]
    no_build: bool,
    /// Payload to send [default: the pull_request.opened example, 21 KB compacted].
    #[arg(long)]
    payload: Option<PathBuf>,
    /// `X-GitHub-Event` sent with the payload.
    #[arg(long, default_value = "pull_request")]
    event: String,
    /// Extra environment for the hookdock process, e.g. `HOOKDOCK_INGEST__MAX_BATCH=64`
    /// (repeatable; for experiments).
    #[arg(long, value_name = "KEY=VALUE")]
    hookdock_env: Vec<String>,
    /// Keep the servers' data directories (printed) instead of deleting them.
    #[arg(long)]
    keep: bool,
    /// Also write the results as JSON to this file: every round's results, the per-round
    /// ratios and their medians, the checks and whether every target was met.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Target {
    /// Verify + parse + dedup in memory, answer.
    Memory,
    /// Same, plus append-only log with group-commit fdatasync before answering.
    Durable,
    /// hookdock serve on SQLite, default settings.
    Hookdock,
    /// hookdock serve on SQLite with queue.workers = 0 (ingest only, no handlers run).
    HookdockIngestOnly,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Memory => "memory",
            Target::Durable => "durable",
            Target::Hookdock => "hookdock",
            Target::HookdockIngestOnly => "hookdock-ingest-only",
        }
    }

    fn is_hookdock(self) -> bool {
        matches!(self, Target::Hookdock | Target::HookdockIngestOnly)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum PhaseKind {
    Closed,
    Open,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Internal::BaselineMemory { listen }) => secret_from_env()
            .and_then(|secret| baseline::serve(listen, secret, None))
            .map(|()| ExitCode::SUCCESS),
        Some(Internal::BaselineDurable { listen, log }) => secret_from_env()
            .and_then(|secret| baseline::serve(listen, secret, Some(&log)))
            .map(|()| ExitCode::SUCCESS),
        Some(Internal::Metrics(args)) => metrics::run(args),
        Some(Internal::Disk(args)) => disk::run(args),
        Some(Internal::LargePush(args)) => large::run(args),
        None => run_bench(cli.bench),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hookdock-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn secret_from_env() -> anyhow::Result<Vec<u8>> {
    std::env::var(SECRET_ENV)
        .map(String::into_bytes)
        .with_context(|| format!("{SECRET_ENV} is not set"))
}

fn run_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build of the load generator; use `cargo run --release -p hookdock-bench`"
        );
    }
    let targets = if args.only.is_empty() {
        vec![Target::Memory, Target::Durable, Target::Hookdock]
    } else {
        args.only.clone()
    };
    let phases = if args.phases.is_empty() {
        vec![PhaseKind::Closed, PhaseKind::Open]
    } else {
        args.phases.clone()
    };
    let hookdock_bin = if targets.iter().any(|t| t.is_hookdock()) {
        Some(hookdock_binary(args.hookdock_bin.as_ref(), args.no_build)?)
    } else {
        None
    };
    let payload_path = args.payload.clone().unwrap_or_else(default_payload);
    let raw = std::fs::read(&payload_path)
        .with_context(|| format!("reading payload {}", payload_path.display()))?;
    let template = PayloadTemplate::new(&raw, SECRET.as_bytes())
        .with_context(|| format!("preparing payload {}", payload_path.display()))?;
    let window = Window {
        warmup: Duration::from_secs(args.warmup_secs),
        duration: Duration::from_secs(args.duration_secs.max(1)),
    };

    print_header(&args, &payload_path, template.len());
    // Probed before the first phase, so that each run says what the durable baseline met.
    let page_cache = if targets.contains(&Target::Durable) {
        let state = disk::PageCacheState::measure(disk::PageCacheState::PROBE_BYTES)?;
        println!("{}", page_cache_line(&state));
        Some(state)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let template = Arc::new(template);
    let plan = Plan {
        args: &args,
        targets: &targets,
        phases: &phases,
        hookdock_bin: hookdock_bin.as_deref(),
        template: &template,
        window,
    };
    let mut rounds: Vec<Vec<TargetResult>> = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("round {round}/{}", args.rounds);
        let results = run_round(&plan, &runtime)
            .with_context(|| format!("round {round} of {}", args.rounds))?;
        rounds.push(results);
    }

    println!();
    print!("{}", report::tables(&rounds));
    let summary = summarize(&rounds);
    print_summary(&summary, rounds.len());
    if let Some(state) = &page_cache {
        println!("\n{}", page_cache_line(state));
        let log = report::closed_thread_us(&rounds, "durable", baseline::LOG_THREAD);
        if !log.is_empty() {
            println!(
                "durable baseline's log thread ({}), closed loop: {} µs per request by round \
                 (16-27 with its page cache warm on the machines of BENCHMARKS.md)",
                baseline::LOG_THREAD,
                log.iter()
                    .map(|us| format!("{us:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
        }
    }
    if let Some(path) = &args.json {
        // `results` is round 1's, in the shape it had before there were rounds; `rounds` holds
        // every round's, `ratios` and `checks` the per-round values and their medians.
        let json = serde_json::json!({
            "results": rounds.first(),
            "rounds": rounds,
            "ratios": summary.ratios,
            "checks": summary.checks,
            "targets_met": summary.targets_met(),
            "page_cache_at_start": page_cache,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nResults written to {}", path.display());
    }
    let errors: u64 = rounds.iter().flatten().map(TargetResult::errors).sum();
    if errors > 0 {
        eprintln!("\nFAILED: {errors} request(s) were not answered 200 `received` (see above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What every round runs, the same each time.
struct Plan<'a> {
    args: &'a BenchArgs,
    targets: &'a [Target],
    phases: &'a [PhaseKind],
    hookdock_bin: Option<&'a Path>,
    template: &'a Arc<PayloadTemplate>,
    window: Window,
}

/// One round: every target's phases in turn, each against a fresh server.
fn run_round(
    plan: &Plan<'_>,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Vec<TargetResult>> {
    let Plan {
        args,
        targets,
        phases,
        hookdock_bin,
        template,
        window,
    } = *plan;
    let mut results = Vec::new();
    for &target in targets {
        let mut result = TargetResult {
            name: target.name().into(),
            closed: None,
            open: None,
            peak_rss_kb: 0,
            disk_bytes_per_delivery: None,
        };
        for &kind in phases {
            let server = Server::start(target, hookdock_bin, &args.hookdock_env, args.keep)?;
            eprintln!(
                "  {:<22} {:?} loop: server pid {}, warm-up {} s, measuring {} s …",
                target.name(),
                kind,
                server.pid(),
                window.warmup.as_secs(),
                window.duration.as_secs()
            );
            let addr = server.addr;
            let deliveries = Arc::new(Deliveries::new(template.clone(), addr, &args.event));
            let phase = runtime.block_on(async {
                server.wait_ready().await?;
                let mut phase = match kind {
                    PhaseKind::Closed => {
                        load::closed_loop(
                            addr,
                            deliveries.clone(),
                            args.connections,
                            window,
                            server.pid(),
                        )
                        .await
                    }
                    PhaseKind::Open => {
                        load::open_loop(
                            addr,
                            deliveries.clone(),
                            args.connections,
                            args.rate,
                            window,
                            server.pid(),
                        )
                        .await
                    }
                }?;
                phase.sent = deliveries.sent();
                if target.is_hookdock() {
                    let metrics = load::get(addr, "/metrics").await;
                    let text = metrics.map(|m| String::from_utf8_lossy(&m).into_owned());
                    phase.group_commit = text.as_deref().and_then(report::group_commit_stats);
                    phase.flush = text.as_deref().and_then(report::flush_stats);
                }
                anyhow::Ok(phase)
            });
            let rss = procfs::peak_rss_kb(server.pid());
            let disk = server.disk_bytes();
            server.stop();
            let phase = phase.with_context(|| format!("{} {:?} loop", target.name(), kind))?;
            result.peak_rss_kb = result.peak_rss_kb.max(rss?);
            if kind == PhaseKind::Closed && phase.ok > 0 {
                result.disk_bytes_per_delivery = disk.map(|b| b as f64 / phase.sent as f64);
            }
            print_phase(target.name(), &phase);
            match kind {
                PhaseKind::Closed => result.closed = Some(phase),
                PhaseKind::Open => result.open = Some(phase),
            }
        }
        results.push(result);
    }

    Ok(results)
}

/// What the page cache probe at the start of the run found, and what it means for the ratios.
fn page_cache_line(state: &disk::PageCacheState) -> String {
    let mut line = format!(
        "new page cache at the start: {:.2} GB/s as found, {:.2} GB/s at once again ({} MiB each)",
        state.found_gbps,
        state.again_gbps,
        disk::PageCacheState::PROBE_BYTES >> 20
    );
    if state.slow_until_used() {
        line.push_str(
            "; slow until used: on this machine the durable baseline pays for its first writes, \
             so hookdock's ratios to it are kinder than where memory stays warm (BENCHMARKS.md, \
             \"The durable baseline on a VM\")",
        );
    }
    line
}

fn print_header(args: &BenchArgs, payload: &Path, size: usize) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    println!("hookdock-bench: {cpus} CPU(s) {model}");
    println!(
        "payload {} ({size} bytes compacted, sender.id varied per request), event {}",
        payload.display(),
        args.event
    );
    println!(
        "closed loop {} connections; open loop {}/s over {} connections; {} s warm-up + {} s per phase; fresh server per phase",
        args.connections, args.rate, args.connections, args.warmup_secs, args.duration_secs
    );
    if args.rounds > 1 {
        println!(
            "{} rounds, one after another, each running every target's phases in turn",
            args.rounds
        );
    }
}

fn print_phase(name: &str, p: &Phase) {
    eprintln!(
        "  {name:<22} {} : {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {:.0} µs CPU/req, {} errors{}",
        p.kind,
        p.req_per_sec,
        p.latency.p50_ms,
        p.latency.p99_ms,
        p.latency.p999_ms,
        p.server_cpu_us_per_req,
        p.errors,
        p.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
}

/// The ratios of each hookdock target to the baselines, and its target checks.
struct Summary {
    ratios: Vec<report::Comparison>,
    checks: Vec<TargetChecks>,
}

#[derive(serde::Serialize)]
struct TargetChecks {
    target: String,
    checks: Vec<report::Check>,
}

impl Summary {
    fn targets_met(&self) -> bool {
        self.checks.iter().flat_map(|t| &t.checks).all(|c| c.pass)
    }
}

/// Compares every hookdock target of the rounds to the durable and memory baselines.
fn summarize(rounds: &[Vec<TargetResult>]) -> Summary {
    // The targets are the same in every round: round 1 names them.
    let hookdock_targets: Vec<&str> = rounds
        .first()
        .into_iter()
        .flatten()
        .map(|r| r.name.as_str())
        .filter(|name| name.starts_with("hookdock"))
        .collect();
    let mut summary = Summary {
        ratios: Vec::new(),
        checks: Vec::new(),
    };
    for &name in &hookdock_targets {
        for base in ["durable", "memory"] {
            summary.ratios.extend(report::compare(rounds, name, base));
        }
        summary.checks.push(TargetChecks {
            target: name.into(),
            checks: report::checks(rounds, name),
        });
    }
    summary
}

/// Prints the ratios and the target checks, with the value of every round beside the median
/// when there is more than one round.
fn print_summary(summary: &Summary, rounds: usize) {
    let several = rounds > 1;
    let per_round = |values: &[f64], prefix: &str| {
        if several {
            format!(" ({prefix}{})", report::list(values))
        } else {
            String::new()
        }
    };
    for target in &summary.checks {
        for c in summary.ratios.iter().filter(|c| c.target == target.target) {
            println!(
                "\n{}/{}: throughput {:.2}x{}, CPU per request {:.2}x{}, closed-loop p99 {:.2}x{}",
                c.target,
                c.base,
                c.throughput.median,
                per_round(&c.throughput.rounds, "rounds "),
                c.cpu_per_req.median,
                per_round(&c.cpu_per_req.rounds, ""),
                c.closed_p99.median,
                per_round(&c.closed_p99.rounds, ""),
            );
        }
        if several {
            println!(
                "\nTargets for {} (medians of {rounds} interleaved rounds, peak RSS the highest round):",
                target.target
            );
        } else {
            println!("\nTargets for {}:", target.target);
        }
        for c in &target.checks {
            let rounds = if several {
                format!("  rounds {}", report::list(&c.rounds))
            } else {
                String::new()
            };
            println!(
                "  {:<44} {:>8.2} {:<9} limit {:>5}  {}{rounds}",
                c.what,
                c.value,
                c.unit,
                c.limit,
                if c.pass { "PASS" } else { "FAIL" }
            );
        }
    }
}

/// The payload: the shared fixture if present, else hookdock's identical embedded example.
fn default_payload() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest.join("../../../shared/fixtures/webhooks/pull_request.opened.0.json");
    if shared.is_file() {
        shared
    } else {
        manifest.join("../hookdock/payloads/pull_request.opened.json")
    }
}

/// The hookdock binary to test: `--hookdock-bin`, else `target/release/hookdock`, built (or
/// brought up to date) with cargo first, since `cargo run -p hookdock-bench` builds only the bench.
fn hookdock_binary(hookdock_bin: Option<&PathBuf>, no_build: bool) -> anyhow::Result<PathBuf> {
    if let Some(bin) = hookdock_bin {
        if !bin.is_file() {
            bail!("--hookdock-bin {} does not exist", bin.display());
        }
        return Ok(bin.clone());
    }
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let profile_dir = exe.parent().context("bench executable has no directory")?;
    let target_dir = profile_dir
        .parent()
        .context("bench executable is not in a cargo target directory")?;
    let bin = target_dir.join("release").join("hookdock");
    if !no_build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        eprintln!("building hookdock: cargo build --release -p hookdock");
        let mut build = Command::new(&cargo);
        build
            .args(["build", "--release", "-p", "hookdock", "--manifest-path"])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", target_dir);
        // `cargo run` gives the bench the package's CARGO_PKG_*, CARGO_MANIFEST_DIR, …; build
        // scripts (ring's, for one) rerun when those change, so passing them on would rebuild
        // half the dependency tree here and again at the next plain `cargo build`.
        for (key, _) in std::env::vars_os() {
            if is_cargo_run_variable(&key.to_string_lossy()) {
                build.env_remove(key);
            }
        }
        let status = build.status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => bail!("`cargo build --release -p hookdock` failed ({s})"),
            Err(e) if bin.is_file() => {
                eprintln!(
                    "warning: cannot run cargo ({e}); using the existing {}",
                    bin.display()
                )
            }
            Err(e) => return Err(e).context("running `cargo build --release -p hookdock`"),
        }
    }
    if !bin.is_file() {
        bail!(
            "{} does not exist; build it with `cargo build --release -p hookdock`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Variables `cargo run` sets for the program it runs (not the user's cargo configuration).
fn is_cargo_run_variable(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_MANIFEST_LINKS",
        "CARGO_CRATE_NAME",
        "CARGO_BIN_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&key) || key.starts_with("CARGO_PKG_") || key.starts_with("CARGO_CFG_")
}

/// A server under test, in its own process and data directory.
struct Server {
    child: Child,
    addr: SocketAddr,
    dir: Option<tempfile::TempDir>,
    kept: Option<PathBuf>,
}

impl Server {
    fn start(
        target: Target,
        hookdock_bin: Option<&Path>,
        extra_env: &[String],
        keep: bool,
    ) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hookdock-bench-{}-", target.name()))
            .tempdir()
            .context("creating a data directory")?;
        let addr = free_port()?;
        let mut cmd = match target {
            Target::Memory | Target::Durable => {
                let exe = std::env::current_exe().context("locating the bench executable")?;
                let mut cmd = Command::new(exe);
                if target == Target::Memory {
                    cmd.arg("baseline-memory");
                } else {
                    cmd.arg("baseline-durable")
                        .arg("--log")
                        .arg(dir.path().join("deliveries.log"));
                }
                cmd.arg("--listen").arg(addr.to_string());
                cmd.env(SECRET_ENV, SECRET);
                cmd
            }
            Target::Hookdock | Target::HookdockIngestOnly => {
                let bin = hookdock_bin.context("hookdock binary")?;
                let mut cmd = Command::new(bin);
                cmd.arg("serve");
                // Only the settings given here: no hookdock.toml, no HOOKDOCK_* from the caller.
                for (key, _) in std::env::vars_os() {
                    if key.to_string_lossy().starts_with("HOOKDOCK_") {
                        cmd.env_remove(key);
                    }
                }
                cmd.current_dir(dir.path())
                    .env("HOOKDOCK_LISTEN", addr.to_string())
                    .env(
                        "HOOKDOCK_DATABASE_URL",
                        format!("sqlite://{}", dir.path().join("bench.db").display()),
                    )
                    .env("HOOKDOCK_WEBHOOK_SECRET", SECRET)
                    .env("HOOKDOCK_ADMIN_TOKEN", "hookdock-bench-admin-token")
                    .env("HOOKDOCK_LOG", "warn")
                    .env("HOOKDOCK_SHUTDOWN_GRACE_SECS", "2");
                if target == Target::HookdockIngestOnly {
                    cmd.env("HOOKDOCK_QUEUE__WORKERS", "0");
                }
                for pair in extra_env {
                    let (key, value) = pair
                        .split_once('=')
                        .with_context(|| format!("--hookdock-env {pair:?} is not KEY=VALUE"))?;
                    cmd.env(key, value);
                }
                cmd
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {} server", target.name()))?;
        let (dir, kept) = if keep {
            let path = dir.keep();
            eprintln!("  data directory kept: {}", path.display());
            (None, Some(path))
        } else {
            (Some(dir), None)
        };
        Ok(Server {
            child,
            addr,
            dir,
            kept,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn data_dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.path()).or(self.kept.as_deref())
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if load::healthy(self.addr).await {
                return Ok(());
            }
            if !process_alive(self.pid()) {
                bail!("the server exited during start-up (see its output above)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the server did not answer /healthz within 60 s")
    }

    /// Bytes of every file in the data directory.
    fn disk_bytes(&self) -> Option<u64> {
        let dir = self.data_dir()?;
        let entries = std::fs::read_dir(dir).ok()?;
        Some(
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum(),
        )
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    fn stop(mut self) {
        let pid = self.pid();
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: signalling our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    listener.local_addr().context("finding a free port")
}
