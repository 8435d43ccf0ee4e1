//! `cargo run --release -p hookdock-bench -- disk`: the floor under every durable receiver on
//! this machine. Appends records of the benchmark payload's size to a log in a fresh temporary
//! directory (where the load benchmark's servers keep their data), `fdatasync`s after each
//! append, at the open loop's rate, and prints the latencies of the `fdatasync` calls alone.
//! An open-loop p99 that waits for the disk cannot be lower than this file system's.
//!
//! It also times writes into new page cache (no flush) three times: as the machine is, at once
//! again, and after a pause. On a VM that hands freed memory back to its host, the first and
//! the last are much slower than the second, and a receiver that appends a lot (the durable
//! baseline: about 280 MB/s in the closed loop) pays that in CPU per request.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::report::{Latency, new_histogram};

#[derive(clap::Args)]
pub struct DiskArgs {
    /// Seconds to measure.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes appended before each `fdatasync` (the benchmark's payload is 21,375 bytes).
    #[arg(long, default_value_t = 21_375)]
    bytes: usize,
    /// Appends (and flushes) per second, as the open loop's deliveries.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// MiB written into new page cache per pass of the page cache probe (0: skip it).
    #[arg(long, default_value_t = 1024)]
    cache_mb: u64,
    /// Seconds of pause before the page cache probe's last pass.
    #[arg(long, default_value_t = 10)]
    cache_pause_secs: u64,
}

/// What the probe measured.
struct Probe {
    /// `fdatasync` latencies in microseconds.
    flushes: Histogram<u64>,
    /// Size of the log afterwards.
    log_bytes: u64,
}

pub fn run(args: DiskArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1");
    let dir = tempfile::Builder::new()
        .prefix("hookdock-bench-disk-")
        .tempdir()
        .context("creating a directory for the probe's log")?;
    if args.cache_mb > 0 {
        let pause = Duration::from_secs(args.cache_pause_secs);
        let bytes = args
            .cache_mb
            .checked_mul(1 << 20)
            .context("--cache-mb is too large")?;
        let [found, again, paused] = page_cache_passes(dir.path(), bytes, pause)?;
        println!(
            "{} MiB into new page cache, no flush, in {}:",
            args.cache_mb,
            dir.path().display()
        );
        println!(
            "  as found {found:.2} GB/s, at once again {again:.2} GB/s, after {} s idle {paused:.2} GB/s",
            pause.as_secs()
        );
        if slow_until_used([found, again, paused]) {
            println!(
                "  new page cache is slow to write here until it has just been used: this machine \
                 seems to hand freed memory back to its host, so the durable baseline's CPU per \
                 request depends on it (BENCHMARKS.md, \"The durable baseline on a VM\")"
            );
        }
    }
    let window = Duration::from_secs(args.seconds.max(1));
    let probe = probe(dir.path(), args.bytes, args.rate, window)?;
    let l = Latency::from_histogram(&probe.flushes);
    println!(
        "fdatasync after each {}-byte append, {}/s for {} s, in {}:",
        args.bytes,
        args.rate,
        window.as_secs(),
        dir.path().display()
    );
    println!(
        "  {} flushes ({:.1} MB written): p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, mean {:.2} ms",
        probe.flushes.len(),
        probe.log_bytes as f64 / 1e6,
        l.p50_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        l.mean_ms
    );
    Ok(ExitCode::SUCCESS)
}

/// Appends `bytes` and flushes, `rate` times a second (paced from the start, so a slow flush
/// is followed by the ones that fell behind), for `window`.
fn probe(dir: &Path, bytes: usize, rate: u64, window: Duration) -> anyhow::Result<Probe> {
    let path = dir.join("probe.log");
    let mut file = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let record = vec![b'x'; bytes];
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut flushes = new_histogram();
    let start = Instant::now();
    let mut next = start;
    while next.duration_since(start) < window {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        file.write_all(&record)
            .with_context(|| format!("writing {}", path.display()))?;
        let flushing = Instant::now();
        file.sync_data()
            .with_context(|| format!("flushing {}", path.display()))?;
        let us = u64::try_from(flushing.elapsed().as_micros()).unwrap_or(u64::MAX);
        flushes.saturating_record(us.max(1));
        next += interval;
    }
    let log_bytes = file
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    Ok(Probe { flushes, log_bytes })
}

/// Whether [`page_cache_passes`]' rates show new page cache slow to write until it has just
/// been used: the pass as found or the one after the pause at under half the one at once again.
fn slow_until_used([found, again, paused]: [f64; 3]) -> bool {
    PageCacheState {
        found_gbps: found.min(paused),
        again_gbps: again,
    }
    .slow_until_used()
}

/// Writes `bytes` into a new file (1 MiB at a time, never flushed) and deletes it: as found,
/// at once again, and again after `pause`. Returns the three write rates in GB/s.
fn page_cache_passes(dir: &Path, bytes: u64, pause: Duration) -> anyhow::Result<[f64; 3]> {
    let state = PageCacheState::measure_in(dir, bytes)?;
    std::thread::sleep(pause);
    let paused = page_cache_pass(&dir.join(PROBE_FILE), bytes)?;
    Ok([state.found_gbps, state.again_gbps, paused])
}

/// The file the page cache passes write and delete.
const PROBE_FILE: &str = "page-cache.probe";

/// Writes `bytes` into a new file at `path` (1 MiB at a time, never flushed), deletes it and
/// returns the write rate in GB/s.
fn page_cache_pass(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    let chunk = vec![b'x'; 1 << 20];
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let start = Instant::now();
    let mut written = 0u64;
    while written < bytes {
        let n = chunk
            .len()
            .min(usize::try_from(bytes - written).unwrap_or(usize::MAX));
        file.write_all(&chunk[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        written += n as u64;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    drop(file);
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(written as f64 / secs / 1e9)
}

/// How fast new page cache is written when a load run starts, and at once again: the
/// durable baseline appends about 280 MB/s of it, so a machine that is slow to hand out new
/// page cache (a VM that gives freed memory back to its host) makes the baseline dearer.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PageCacheState {
    pub found_gbps: f64,
    pub again_gbps: f64,
}

impl PageCacheState {
    /// Bytes written per pass at the start of a load run: enough to see the rate, small
    /// enough to warm little of what the phases will use.
    pub const PROBE_BYTES: u64 = 256 << 20;

    /// Measures it with two passes of `bytes` in a fresh temporary directory.
    pub fn measure(bytes: u64) -> anyhow::Result<PageCacheState> {
        let dir = tempfile::Builder::new()
            .prefix("hookdock-bench-cache-")
            .tempdir()
            .context("creating a directory for the page cache probe")?;
        PageCacheState::measure_in(dir.path(), bytes)
    }

    /// The same in `dir`, whose probe file is gone afterwards.
    fn measure_in(dir: &Path, bytes: u64) -> anyhow::Result<PageCacheState> {
        let path = dir.join(PROBE_FILE);
        let found_gbps = page_cache_pass(&path, bytes)?;
        let again_gbps = page_cache_pass(&path, bytes)?;
        Ok(PageCacheState {
            found_gbps,
            again_gbps,
        })
    }

    /// Whether new page cache was slow until just used (under half the second pass's rate).
    pub fn slow_until_used(&self) -> bool {
        self.found_gbps < self.again_gbps / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_append_is_flushed_and_timed() {
        let dir = tempfile::tempdir().unwrap();
        let probe = probe(dir.path(), 4096, 500, Duration::from_millis(100)).unwrap();
        // Paced at 500/s for 100 ms: 50 appends, each one flushed and recorded.
        assert_eq!(probe.flushes.len(), 50);
        assert_eq!(probe.log_bytes, 50 * 4096);
        assert_eq!(
            std::fs::metadata(dir.path().join("probe.log"))
                .unwrap()
                .len(),
            50 * 4096
        );
    }

    #[test]
    fn page_cache_passes_write_and_remove_their_file() {
        let dir = tempfile::tempdir().unwrap();
        let rates = page_cache_passes(dir.path(), 3 << 20, Duration::ZERO).unwrap();
        assert!(
            rates.iter().all(|r| r.is_finite() && *r > 0.0),
            "rates {rates:?}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_run_start_probe_measures_two_passes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = PageCacheState::measure_in(dir.path(), 3 << 20).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(
            state.found_gbps.is_finite()
                && state.found_gbps > 0.0
                && state.again_gbps.is_finite()
                && state.again_gbps > 0.0,
            "{state:?}"
        );
        let slow = PageCacheState {
            found_gbps: 0.32,
            again_gbps: 5.25,
        };
        assert!(slow.slow_until_used());
        let warm = PageCacheState {
            found_gbps: 4.66,
            again_gbps: 5.12,
        };
        assert!(!warm.slow_until_used());
    }

    #[test]
    fn slow_new_page_cache_is_told_apart_from_noise() {
        // The VM of 2026-12-06 morning, and a machine that keeps its memory.
        assert!(slow_until_used([0.45, 5.30, 0.46]));
        assert!(slow_until_used([5.1, 5.3, 0.77]));
        assert!(!slow_until_used([4.8, 5.3, 5.0]));
    }
}
