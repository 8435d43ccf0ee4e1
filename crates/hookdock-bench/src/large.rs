//! Peak memory of `hookdock serve` taking one delivery near GitHub's 25 MB cap: a `push` of
//! thousands of commits with their file lists, built on the example push's envelope. It is
//! sent once to a fresh server that only stores it (`queue.workers = 0`) and once to one with
//! the default handlers, whose jobs are then waited for; each server's `VmHWM` is read after.
//! The load bench's bodies are 21 KB: the memory a body near the cap costs shows only here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::load::{self, Deliveries};
use crate::payload::PayloadTemplate;
use crate::report;
use crate::{SECRET, Server, Target, hookdock_binary, procfs};

#[derive(clap::Args)]
pub struct LargePushArgs {
    /// Size of the body to build, in bytes (hookdock, as GitHub, takes at most 26,214,400).
    #[arg(long, default_value_t = 23_000_000)]
    bytes: usize,
    /// File names in each commit's lists (half added, half modified).
    #[arg(long, default_value_t = 80)]
    files: usize,
    /// The hookdock binary [default: target/release/hookdock, built first with cargo].
    #[arg(long)]
    hookdock_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p hookdock` first.
    #[arg(long)]
    no_build: bool,
}

/// The example push whose envelope (repository, pusher, sender, …) the body keeps.
fn example_push() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hookdock/payloads/push.json")
}

pub fn run(args: LargePushArgs) -> anyhow::Result<ExitCode> {
    let hookdock = hookdock_binary(args.hookdock_bin.as_ref(), args.no_build)?;
    let example = example_push();
    let example = example.canonicalize().unwrap_or(example);
    let raw = std::fs::read(&example).with_context(|| format!("reading {}", example.display()))?;
    let (body, commits) = large_push(&raw, args.bytes, args.files)?;
    let template = Arc::new(PayloadTemplate::new(&body, SECRET.as_bytes())?);
    println!(
        "one push of {} bytes, {commits} commits of {} file names each, on the envelope of {}",
        template.len(),
        args.files,
        example.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    for target in [Target::HookdockIngestOnly, Target::Hookdock] {
        let server = Server::start(target, Some(&hookdock), &[], false)?;
        let measured = runtime.block_on(take_one(&server, &template, target));
        server.stop();
        let (at_start, answered, handled, peak) = measured?;
        let handled = handled.map_or(String::new(), |t| {
            format!(", its jobs done {:.1} s after", t.as_secs_f64())
        });
        println!(
            "{:<22} answered `received` in {:.2} s{handled}; peak RSS (VmHWM) {:.1} MB \
             ({:.1} MB at the start)",
            target.name(),
            answered.as_secs_f64(),
            peak as f64 / 1024.0,
            at_start as f64 / 1024.0,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends the body once; waits for the jobs (if the server runs any); returns the peak RSS at
/// the start (kB), the time to the answer, the time from it to the jobs' end, the peak RSS.
async fn take_one(
    server: &Server,
    template: &Arc<PayloadTemplate>,
    target: Target,
) -> anyhow::Result<(u64, Duration, Option<Duration>, u64)> {
    server.wait_ready().await?;
    let at_start = procfs::peak_rss_kb(server.pid())?;
    let deliveries = Deliveries::new(Arc::clone(template), server.addr, "push");
    let mut sender = load::connect(server.addr).await?;
    let sent = Instant::now();
    let response = sender.send_request(deliveries.next()?).await?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    let answered = sent.elapsed();
    let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    if status != 200 || answer["status"] != "received" {
        bail!("{} answered {status}: {answer}", target.name());
    }
    let handled = if target == Target::Hookdock {
        let done = Instant::now();
        wait_for_jobs(server).await?;
        Some(done.elapsed())
    } else {
        None
    };
    Ok((
        at_start,
        answered,
        handled,
        procfs::peak_rss_kb(server.pid())?,
    ))
}

/// Until `/metrics` shows no job pending, running or to be retried (it reads the queue at most
/// once a second); fails if one is dead (its handler could not take the push).
async fn wait_for_jobs(server: &Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Some(text) = load::get(server.addr, "/metrics").await {
            let text = String::from_utf8_lossy(&text);
            let jobs = |status: &str| {
                report::series(
                    &text,
                    &format!("hookdock_queue_jobs{{status=\"{status}\"}}"),
                )
            };
            if jobs("dead").is_some_and(|n| n > 0.0) {
                bail!("a job of the push is dead (see the server's log above)");
            }
            let left: Option<f64> = ["pending", "processing", "failed"]
                .map(jobs)
                .into_iter()
                .sum();
            if left == Some(0.0) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the push's jobs were not done within 300 s")
}

/// The example push `raw` with commits added until its compact form holds about `bytes`
/// bytes, each with `files` file names; and how many commits it has.
pub fn large_push(raw: &[u8], bytes: usize, files: usize) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut push: Value = serde_json::from_slice(raw).context("the example push is not JSON")?;
    // The envelope, and the last commit again as `head_commit`.
    let mut size = serde_json::to_vec(&push)?.len() + serde_json::to_vec(&commit(0, files))?.len();
    let mut commits = Vec::new();
    while size < bytes {
        let commit = commit(commits.len(), files);
        size += serde_json::to_vec(&commit)?.len() + 1;
        commits.push(commit);
    }
    let count = commits.len();
    push["head_commit"] = commits.last().cloned().unwrap_or(Value::Null);
    push["commits"] = Value::Array(commits);
    Ok((serde_json::to_vec(&push)?, count))
}

/// A commit as GitHub's push payload gives one.
fn commit(n: usize, files: usize) -> Value {
    let id = format!("{:040x}", n + 1);
    let names = |kind: &str, range: std::ops::Range<usize>| -> Vec<String> {
        range
            .map(|f| format!("src/area{}/{kind}{n}_{f}.rs", n % 97))
            .collect()
    };
    let person =
        json!({"name": "Monalisa Octocat", "email": "mona@github.com", "username": "octocat"});
    json!({
        "id": id,
        "tree_id": format!("{:040x}", n + 1_000_000),
        "distinct": true,
        "message": format!("Change {n} of a generated push\n\nTouches {files} files."),
        "timestamp": "2026-12-07T10:00:00Z",
        "url": format!("https://github.com/octo-org/octo-repo/commit/{id}"),
        "author": person,
        "committer": person,
        "added": names("new", 0..files / 2),
        "removed": [],
        "modified": names("changed", files / 2..files),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_push_has_the_asked_size_unique_commits_and_the_example_envelope() {
        let raw = std::fs::read(example_push()).unwrap();
        let (body, count) = large_push(&raw, 2_000_000, 80).unwrap();
        let one_commit = serde_json::to_vec(&commit(0, 80)).unwrap().len();
        assert!(
            (2_000_000..2_000_000 + 2 * one_commit).contains(&body.len()),
            "{} bytes",
            body.len()
        );
        let push: Value = serde_json::from_slice(&body).unwrap();
        let example: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(push["repository"], example["repository"]);
        assert_eq!(push["sender"], example["sender"]);
        let commits = push["commits"].as_array().unwrap();
        let ids: std::collections::HashSet<&str> =
            commits.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), commits.len());
        assert_eq!(commits.len(), count);
        assert_eq!(push["head_commit"], commits[commits.len() - 1]);
        assert_eq!(commits[0]["added"].as_array().unwrap().len(), 40);
        assert_eq!(commits[0]["modified"].as_array().unwrap().len(), 40);
        // The bench can sign it as GitHub would (it varies the sender's id).
        assert!(PayloadTemplate::new(&body, SECRET.as_bytes()).is_ok());
    }

    #[test]
    fn the_default_push_fits_under_githubs_cap() {
        let raw = std::fs::read(example_push()).unwrap();
        let (body, _) = large_push(&raw, 23_000_000, 80).unwrap();
        assert!(body.len() >= 23_000_000 && body.len() < 25 * 1024 * 1024);
    }
}
