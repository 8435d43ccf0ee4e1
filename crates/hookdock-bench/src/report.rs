//! Results, ratios and the targets hookdock is held to; plain data and arithmetic.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, from 1 µs to 60 s, to 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// One measured window against one server process.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// `closed` or `open`.
    pub kind: String,
    /// Requests sent to this server process, warm-up included.
    pub sent: u64,
    /// hookdock only: mean deliveries per group commit and mean commit time (ms), from its
    /// `/metrics` at the end of the phase.
    pub group_commit: Option<(f64, f64)>,
    /// hookdock on SQLite only: mean commits' callers answered per WAL flush and mean flush
    /// time (ms), from `hookdock_store_sync_waiters` and `hookdock_store_sync_seconds`.
    pub flush: Option<(f64, f64)>,
    /// Connections (closed loop) or target rate (open loop), for the label.
    pub setting: u64,
    pub seconds: f64,
    /// Requests answered 200 `received` within the window.
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub req_per_sec: f64,
    pub latency: Latency,
    pub server_cpu_us_per_req: f64,
    /// The same split by the server's thread names (threads sharing a name summed), largest
    /// first: where a server's time goes, without a profiler.
    pub server_threads_us_per_req: Vec<(String, f64)>,
    /// Server CPU over the window, in cores (1.0 = one core busy all the time).
    pub server_cores: f64,
    pub client_cpu_us_per_req: f64,
    /// Busy CPU of everything else on the machine, in cores: other processes disturb the run.
    pub other_cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub name: String,
    pub closed: Option<Phase>,
    pub open: Option<Phase>,
    /// Highest `VmHWM` of the server processes, in kB.
    pub peak_rss_kb: u64,
    /// Bytes on disk after the closed-loop phase, per stored delivery.
    pub disk_bytes_per_delivery: Option<f64>,
}

impl TargetResult {
    pub fn errors(&self) -> u64 {
        self.closed.iter().chain(&self.open).map(|p| p.errors).sum()
    }
}

/// `(count, sum)` of a summary in Prometheus text, whatever its labels.
fn summary(metrics: &str, name: &str) -> Option<(f64, f64)> {
    let value = |suffix: &str| {
        let name = format!("{name}{suffix}");
        metrics.lines().find_map(|line| {
            let rest = line.strip_prefix(name.as_str())?;
            let rest = rest
                .strip_prefix('{')
                .map_or(Some(rest), |r| r.split_once('}').map(|(_, v)| v))?;
            rest.trim().parse::<f64>().ok()
        })
    };
    Some((value("_count")?, value("_sum")?))
}

/// The value of one series, `name{labels}` exactly as rendered, in Prometheus text.
pub fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name_and_labels)?.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok()
    })
}

/// Mean batch size and mean milliseconds per batch from hookdock's Prometheus text
/// (`hookdock_store_batch_size` and `hookdock_store_batch_seconds` summaries).
pub fn group_commit_stats(metrics: &str) -> Option<(f64, f64)> {
    let (batches, ops) = summary(metrics, "hookdock_store_batch_size")?;
    let (_, secs) = summary(metrics, "hookdock_store_batch_seconds")?;
    (batches > 0.0).then(|| (ops / batches, secs * 1000.0 / batches))
}

/// Mean waiters per WAL flush and mean milliseconds per flush (`hookdock_store_sync_*`).
pub fn flush_stats(metrics: &str) -> Option<(f64, f64)> {
    let (flushes, waiters) = summary(metrics, "hookdock_store_sync_waiters")?;
    let (_, secs) = summary(metrics, "hookdock_store_sync_seconds")?;
    (flushes > 0.0).then(|| (waiters / flushes, secs * 1000.0 / flushes))
}

/// `a / b`, or NaN when there is nothing to divide by.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        a / b
    } else {
        f64::NAN
    }
}

/// Median of the values that are numbers (NaN, a value that could not be measured, is left
/// out); the mean of the two middle values for an even count; NaN when nothing is left.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// One value per round (index 0 is round 1), and the median that stands for them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PerRound {
    pub rounds: Vec<f64>,
    pub median: f64,
}

impl PerRound {
    pub fn new(rounds: Vec<f64>) -> PerRound {
        let median = median(&rounds);
        PerRound { rounds, median }
    }
}

/// CPU per request of the thread named `thread` in `target`'s closed loop, round by round
/// (rounds without that phase or thread left out).
pub fn closed_thread_us(rounds: &[Vec<TargetResult>], target: &str, thread: &str) -> Vec<f64> {
    rounds
        .iter()
        .filter_map(|round| {
            let phase = find(round, target)?.closed.as_ref()?;
            phase
                .server_threads_us_per_req
                .iter()
                .find(|(name, _)| name == thread)
                .map(|(_, us)| *us)
        })
        .collect()
}

/// The named target of one round's results.
pub fn find<'a>(round: &'a [TargetResult], name: &str) -> Option<&'a TargetResult> {
    round.iter().find(|r| r.name == name)
}

/// A target's closed-loop phases against a baseline's, round by round: each round's ratio is
/// the target's phase of that round over the baseline's phase of the same round, so both ran
/// in the same conditions of the machine.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    pub target: String,
    pub base: String,
    pub throughput: PerRound,
    pub cpu_per_req: PerRound,
    pub closed_p99: PerRound,
}

/// The per-round ratios of `target` to `base`; NaN for a round that lacks either closed-loop
/// phase, None when no round has both.
pub fn compare(rounds: &[Vec<TargetResult>], target: &str, base: &str) -> Option<Comparison> {
    let pairs: Vec<Option<(&Phase, &Phase)>> = rounds
        .iter()
        .map(|round| {
            let t = find(round, target)?.closed.as_ref()?;
            let b = find(round, base)?.closed.as_ref()?;
            Some((t, b))
        })
        .collect();
    if pairs.iter().all(Option::is_none) {
        return None;
    }
    let per_round = |f: fn(&Phase) -> f64| {
        PerRound::new(
            pairs
                .iter()
                .map(|p| p.map_or(f64::NAN, |(t, b)| ratio(f(t), f(b))))
                .collect(),
        )
    };
    Some(Comparison {
        target: target.into(),
        base: base.into(),
        throughput: per_round(|p| p.req_per_sec),
        cpu_per_req: per_round(|p| p.server_cpu_us_per_req),
        closed_p99: per_round(|p| p.latency.p99_ms),
    })
}

/// How a check's per-round values are summed up into the value held to the limit.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Over {
    /// The median of the rounds, for the ratios and latency, which vary from run to run.
    Median,
    /// The highest round, for memory: a limit the server must never exceed.
    Highest,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub what: String,
    /// The value held to the limit: the median or the highest of `rounds`, as `over` says.
    pub value: f64,
    pub limit: f64,
    pub unit: String,
    pub pass: bool,
    pub over: Over,
    /// The value of each round (index 0 is round 1).
    pub rounds: Vec<f64>,
}

/// The targets for hookdock: ≥ 0.8× the durable baseline's throughput, ≤ 1.3× its CPU
/// per request, open-loop p99 under 3 ms, peak RSS under 60 MB.
///
/// With several rounds, the ratios to the baseline are the medians of the per-round ratios, the
/// p99 the median of the per-round p99s, and the peak RSS the highest of any round. With one
/// round every value is that round's. A check is left out when no round has its phases (the
/// throughput and CPU checks also need the durable baseline).
pub fn checks(rounds: &[Vec<TargetResult>], hookdock: &str) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(c) = compare(rounds, hookdock, "durable") {
        out.push(Check {
            what: "throughput vs durable baseline".into(),
            value: c.throughput.median,
            limit: 0.8,
            unit: "x (min)".into(),
            pass: c.throughput.median >= 0.8,
            over: Over::Median,
            rounds: c.throughput.rounds,
        });
        out.push(Check {
            what: "server CPU per request vs durable baseline".into(),
            value: c.cpu_per_req.median,
            limit: 1.3,
            unit: "x (max)".into(),
            pass: c.cpu_per_req.median <= 1.3,
            over: Over::Median,
            rounds: c.cpu_per_req.rounds,
        });
    }
    let targets: Vec<Option<&TargetResult>> =
        rounds.iter().map(|round| find(round, hookdock)).collect();
    let opens: Vec<Option<&Phase>> = targets
        .iter()
        .map(|t| t.and_then(|t| t.open.as_ref()))
        .collect();
    if let Some(first) = opens.iter().flatten().next() {
        let p99 = PerRound::new(
            opens
                .iter()
                .map(|o| o.map_or(f64::NAN, |o| o.latency.p99_ms))
                .collect(),
        );
        // A round that answered nothing has no latency to speak of: it fails the check.
        let answered = opens.iter().all(|o| o.is_some_and(|o| o.ok > 0));
        out.push(Check {
            what: format!("open-loop p99 at {}/s", first.setting),
            value: p99.median,
            limit: 3.0,
            unit: "ms (max)".into(),
            pass: answered && p99.median < 3.0,
            over: Over::Median,
            rounds: p99.rounds,
        });
    }
    if targets.iter().any(Option::is_some) {
        let rss_kb: Vec<u64> = targets
            .iter()
            .map(|t| t.map_or(0, |t| t.peak_rss_kb))
            .collect();
        let highest_mb = rss_kb.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
        out.push(Check {
            what: "peak RSS (VmHWM) under load".into(),
            value: highest_mb,
            limit: 60.0,
            unit: "MB (max)".into(),
            // A round without a reading could have been over the limit.
            pass: rss_kb.iter().all(|&kb| kb > 0) && highest_mb < 60.0,
            over: Over::Highest,
            rounds: rss_kb.iter().map(|&kb| kb as f64 / 1024.0).collect(),
        });
    }
    out
}

/// Per-round values for a report line: `1.08, 0.98, 1.12`.
pub fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every round's table, each under a heading `round i of N` when there is more than one.
pub fn tables(rounds: &[Vec<TargetResult>]) -> String {
    if let [only] = rounds {
        return table(only);
    }
    let mut s = String::new();
    for (i, round) in rounds.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let _ = writeln!(s, "round {} of {}", i + 1, rounds.len());
        s.push_str(&table(round));
    }
    s
}

pub fn table(results: &[TargetResult]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<22} {:<13} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>9} {:>10} {:>8}",
        "target",
        "phase",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "srv µs/req",
        "srv cores",
        "load µs/req",
        "other"
    );
    for r in results {
        for p in r.closed.iter().chain(&r.open) {
            let label = match p.kind.as_str() {
                "closed" => format!("closed {}c", p.setting),
                _ => format!("open {}/s", p.setting),
            };
            let _ = writeln!(
                s,
                "{:<22} {:<13} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>10.0} {:>9.2} {:>10.0} {:>8.2}",
                r.name,
                label,
                p.req_per_sec,
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.p999_ms,
                p.latency.max_ms,
                p.errors,
                p.server_cpu_us_per_req,
                p.server_cores,
                p.client_cpu_us_per_req,
                p.other_cores,
            );
        }
    }
    let _ = writeln!(s);
    for r in results {
        let disk = r
            .disk_bytes_per_delivery
            .filter(|&b| b > 0.0)
            .map(|b| format!(", {b:.0} bytes on disk per delivery"))
            .unwrap_or_default();
        let commits: String = r
            .closed
            .iter()
            .chain(&r.open)
            .filter_map(|p| {
                let (size, ms) = p.group_commit?;
                let flush = p
                    .flush
                    .map(|(waiters, ms)| {
                        format!(", {waiters:.1} answers per WAL flush, {ms:.2} ms per flush")
                    })
                    .unwrap_or_default();
                Some(format!(
                    "; {}: {size:.1} operations per commit, {ms:.2} ms per commit{flush}",
                    p.kind
                ))
            })
            .collect();
        let _ = writeln!(
            s,
            "{:<22} peak RSS (VmHWM) {:.1} MB{disk}{commits}",
            r.name,
            r.peak_rss_kb as f64 / 1024.0
        );
        for p in r.closed.iter().chain(&r.open) {
            if let Some(split) = thread_split(&p.server_threads_us_per_req) {
                let _ = writeln!(s, "{:<22}   {} µs/req by thread: {split}", "", p.kind);
            }
        }
    }
    s
}

/// `name 112, other 63, …` for the threads whose time per request rounds to at least 1 µs.
fn thread_split(rows: &[(String, f64)]) -> Option<String> {
    let shown: Vec<String> = rows
        .iter()
        .filter(|(_, us)| *us >= 0.5)
        .map(|(name, us)| format!("{name} {us:.0}"))
        .collect();
    (!shown.is_empty()).then(|| shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(kind: &str, rps: f64, cpu: f64, p99: f64) -> Phase {
        Phase {
            kind: kind.into(),
            sent: 0,
            group_commit: None,
            flush: None,
            setting: if kind == "open" { 1000 } else { 64 },
            seconds: 10.0,
            ok: 1,
            errors: 0,
            first_error: None,
            req_per_sec: rps,
            latency: Latency {
                p99_ms: p99,
                ..Latency::default()
            },
            server_cpu_us_per_req: cpu,
            server_threads_us_per_req: vec![
                ("tokio-rt-worker".into(), cpu * 0.7),
                ("writer".into(), cpu * 0.3),
            ],
            server_cores: 1.0,
            client_cpu_us_per_req: 10.0,
            other_cores: 0.0,
        }
    }

    fn target(name: &str, rps: f64, cpu: f64, p99: f64, rss_kb: u64) -> TargetResult {
        TargetResult {
            name: name.into(),
            closed: Some(phase("closed", rps, cpu, 20.0)),
            open: Some(phase("open", 1000.0, cpu, p99)),
            peak_rss_kb: rss_kb,
            disk_bytes_per_delivery: None,
        }
    }

    #[test]
    fn a_threads_cpu_is_read_per_round_from_the_closed_loop() {
        let rounds = vec![
            vec![target("durable", 1.0, 100.0, 1.0, 1)],
            vec![target("memory", 1.0, 50.0, 1.0, 1)],
            vec![target("durable", 1.0, 60.0, 1.0, 1)],
        ];
        // 30 % of each durable closed loop's 100 and 60 µs; the round without it is left out.
        let us = closed_thread_us(&rounds, "durable", "writer");
        assert_eq!(us.len(), 2);
        assert!(
            (us[0] - 30.0).abs() < 1e-9 && (us[1] - 18.0).abs() < 1e-9,
            "{us:?}"
        );
        assert!(closed_thread_us(&rounds, "durable", "nobody").is_empty());
    }

    #[test]
    fn percentiles_from_histogram() {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            h.record(us).unwrap();
        }
        let l = Latency::from_histogram(&h);
        assert!((l.p50_ms - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.p99_ms - 9.9).abs() < 0.01, "{l:?}");
        assert!((l.p999_ms - 9.99).abs() < 0.01, "{l:?}");
        assert!((l.max_ms - 10.0).abs() < 0.01, "{l:?}");
        assert!((l.mean_ms - 5.0).abs() < 0.01, "{l:?}");
        assert_eq!(
            Latency::from_histogram(&new_histogram()),
            Latency::default()
        );
    }

    #[test]
    fn a_series_is_read_by_its_exact_labels() {
        let text = "hookdock_queue_jobs{status=\"pending\"} 3\n\
            hookdock_queue_jobs{status=\"pending_x\"} 9\n\
            hookdock_queue_jobs{status=\"dead\"} 0\n";
        let jobs =
            |status: &str| series(text, &format!("hookdock_queue_jobs{{status=\"{status}\"}}"));
        assert_eq!(jobs("pending"), Some(3.0));
        assert_eq!(jobs("dead"), Some(0.0));
        assert_eq!(jobs("failed"), None);
        assert_eq!(series(text, "hookdock_queue_jobs"), None);
    }

    #[test]
    fn group_commit_from_prometheus_text() {
        let text = "# TYPE hookdock_store_batch_size summary\n\
            hookdock_store_batch_size{dialect=\"sqlite\",quantile=\"0.5\"} 31\n\
            hookdock_store_batch_size_sum{dialect=\"sqlite\"} 13304\n\
            hookdock_store_batch_size_count{dialect=\"sqlite\"} 415\n\
            hookdock_store_batch_seconds_sum{dialect=\"sqlite\"} 5.883\n\
            hookdock_store_batch_seconds_count{dialect=\"sqlite\"} 415\n";
        let (size, ms) = group_commit_stats(text).unwrap();
        assert!((size - 32.06).abs() < 0.01, "{size}");
        assert!((ms - 14.18).abs() < 0.01, "{ms}");
        assert_eq!(group_commit_stats("nothing"), None);
        let text = "hookdock_store_sync_waiters_sum 300\nhookdock_store_sync_waiters_count 10\n\
            hookdock_store_sync_seconds_sum 0.02\nhookdock_store_sync_seconds_count 10\n";
        let (waiters, ms) = flush_stats(text).unwrap();
        assert!((waiters - 30.0).abs() < 1e-9 && (ms - 2.0).abs() < 1e-9);
        assert_eq!(flush_stats("nothing"), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(8.0, 10.0), 0.8);
        assert!(ratio(1.0, 0.0).is_nan());
        assert!(ratio(f64::NAN, 1.0).is_nan());
    }

    /// One round of the durable baseline and hookdock.
    fn round(durable: TargetResult, hookdock: TargetResult) -> Vec<TargetResult> {
        vec![durable, hookdock]
    }

    #[test]
    fn checks_pass_and_fail_at_the_limits() {
        let durable = target("durable", 7700.0, 200.0, 1.9, 10_000);
        let good = target("hookdock", 0.8 * 7700.0, 260.0, 2.9, 59 * 1024);
        let c = checks(&[round(durable.clone(), good.clone())], "hookdock");
        assert!(c.iter().all(|c| c.pass), "{c:?}");

        let bad = target("hookdock", 6000.0, 261.0, 3.0, 60 * 1024);
        let c = checks(&[round(durable.clone(), bad)], "hookdock");
        assert_eq!(c.len(), 4);
        assert!(
            !c[0].pass && !c[1].pass && !c[2].pass && !c[3].pass,
            "{c:?}"
        );

        // Without the durable baseline only the absolute targets are checked.
        assert_eq!(checks(&[vec![good.clone()]], "hookdock").len(), 2);
        // Nor is anything checked for a target that did not run.
        assert!(checks(&[vec![durable]], "hookdock").is_empty());
    }

    #[test]
    fn one_round_checks_are_that_rounds_values() {
        let durable = target("durable", 7700.0, 200.0, 1.9, 10_000);
        let hd = target("hookdock", 7000.0, 230.0, 2.5, 40 * 1024 + 512);
        let c = checks(&[round(durable, hd)], "hookdock");
        let values: Vec<f64> = c.iter().map(|c| c.value).collect();
        assert_eq!(values, [7000.0 / 7700.0, 230.0 / 200.0, 2.5, 40.5]);
        assert_eq!(
            c.iter().map(|c| c.limit).collect::<Vec<_>>(),
            [0.8, 1.3, 3.0, 60.0]
        );
        assert!(c.iter().all(|c| c.pass && c.rounds == [c.value]), "{c:?}");
        assert_eq!(c[2].what, "open-loop p99 at 1000/s");
        assert_eq!(c[3].over, Over::Highest);
    }

    #[test]
    fn median_of_odd_and_even_counts_without_nan() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert_eq!(median(&[f64::NAN, 5.0, 1.0, f64::NAN, 3.0]), 3.0);
        assert_eq!(median(&[f64::NAN, 2.0, 4.0]), 3.0);
        assert!(median(&[]).is_nan());
        assert!(median(&[f64::NAN, f64::NAN]).is_nan());
    }

    #[test]
    fn per_round_ratios_pair_phases_of_the_same_round() {
        let rounds = [
            round(
                target("durable", 1000.0, 100.0, 1.0, 1),
                target("hookdock", 900.0, 120.0, 1.0, 1),
            ),
            round(
                target("durable", 800.0, 200.0, 1.0, 1),
                target("hookdock", 1000.0, 200.0, 1.0, 1),
            ),
            // A round without the baseline's closed loop has no ratio.
            round(
                TargetResult {
                    closed: None,
                    ..target("durable", 1.0, 1.0, 1.0, 1)
                },
                target("hookdock", 1.0, 1.0, 1.0, 1),
            ),
        ];
        let c = compare(&rounds, "hookdock", "durable").unwrap();
        assert_eq!(c.throughput.rounds[..2], [0.9, 1.25]);
        assert!(c.throughput.rounds[2].is_nan());
        assert_eq!(c.throughput.median, (0.9 + 1.25) / 2.0);
        assert_eq!(c.cpu_per_req.rounds[..2], [1.2, 1.0]);
        assert_eq!(c.closed_p99.rounds[..2], [1.0, 1.0]);
        assert!(compare(&rounds, "hookdock", "memory").is_none());
    }

    #[test]
    fn checks_hold_the_median_of_rounds_to_the_limits() {
        let durable = || target("durable", 1000.0, 100.0, 1.0, 10_000);
        let hd = |rps, cpu, p99| target("hookdock", rps, cpu, p99, 40 * 1024);
        // Round 2 alone would fail throughput, CPU and latency; the medians pass.
        let noisy_round = round(durable(), hd(700.0, 140.0, 3.5));
        let rounds = [
            round(durable(), hd(900.0, 110.0, 2.0)),
            noisy_round.clone(),
            round(durable(), hd(850.0, 120.0, 2.5)),
        ];
        assert!(
            checks(&[noisy_round], "hookdock")[..3]
                .iter()
                .all(|c| !c.pass)
        );
        let c = checks(&rounds, "hookdock");
        assert!(c.iter().all(|c| c.pass), "{c:?}");
        assert_eq!(c[0].value, 0.85);
        assert_eq!(c[0].rounds, [0.9, 0.7, 0.85]);
        assert_eq!(c[1].value, 1.2);
        assert_eq!(c[2].value, 2.5);
        assert_eq!(c[2].rounds, [2.0, 3.5, 2.5]);
        assert!(c[..3].iter().all(|c| c.over == Over::Median));

        // Two rounds of three failing: the median fails too.
        let rounds = [
            round(durable(), hd(700.0, 140.0, 3.5)),
            round(durable(), hd(900.0, 110.0, 2.0)),
            round(durable(), hd(750.0, 135.0, 3.1)),
        ];
        let c = checks(&rounds, "hookdock");
        assert!(c[..3].iter().all(|c| !c.pass), "{c:?}");
        assert_eq!(c[0].value, 0.75);
        assert_eq!(c[2].value, 3.1);
    }

    #[test]
    fn rss_check_takes_the_highest_round() {
        let durable = || target("durable", 1000.0, 100.0, 1.0, 10_000);
        let hd = |rss_mb: u64| target("hookdock", 1000.0, 100.0, 1.0, rss_mb * 1024);
        let rss = |rounds: &[Vec<TargetResult>]| {
            checks(rounds, "hookdock")
                .into_iter()
                .find(|c| c.what.starts_with("peak RSS"))
                .unwrap()
        };
        let c = rss(&[
            round(durable(), hd(30)),
            round(durable(), hd(61)),
            round(durable(), hd(40)),
        ]);
        assert_eq!((c.value, c.pass, c.over), (61.0, false, Over::Highest));
        assert_eq!(c.rounds, [30.0, 61.0, 40.0]);
        let c = rss(&[round(durable(), hd(30)), round(durable(), hd(59))]);
        assert_eq!((c.value, c.pass), (59.0, true));
        // A round with no reading fails, whatever the others say.
        let c = rss(&[round(durable(), hd(30)), round(durable(), hd(0))]);
        assert!(!c.pass);
    }

    #[test]
    fn tables_head_each_round() {
        let r = vec![target("memory", 11800.0, 150.0, 1.0, 20_000)];
        assert_eq!(tables(std::slice::from_ref(&r)), table(&r));
        let t = tables(&[r.clone(), r]);
        assert!(
            t.contains("round 1 of 2") && t.contains("round 2 of 2"),
            "{t}"
        );
        assert_eq!(t.matches("closed 64c").count(), 2, "{t}");
        assert_eq!(list(&[1.0, 0.976, f64::NAN]), "1.00, 0.98, NaN");
    }

    #[test]
    fn table_lists_every_phase() {
        let t = table(&[target("memory", 11800.0, 150.0, 1.0, 20_000)]);
        assert!(t.contains("closed 64c") && t.contains("open 1000/s"), "{t}");
        assert!(t.contains("19.5 MB"), "{t}");
        assert!(
            t.contains("closed µs/req by thread: tokio-rt-worker 105, writer 45"),
            "{t}"
        );
        assert!(
            t.contains("open µs/req by thread: tokio-rt-worker 105, writer 45"),
            "{t}"
        );
        assert_eq!(thread_split(&[("idle".into(), 0.2)]), None);
    }
}
