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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub what: String,
    pub value: f64,
    pub limit: f64,
    pub unit: String,
    pub pass: bool,
}

/// The targets for hookdock: ≥ 0.8× the durable baseline's throughput, ≤ 1.3× its CPU
/// per request, open-loop p99 under 3 ms, peak RSS under 60 MB.
pub fn checks(hookdock: &TargetResult, durable: Option<&TargetResult>) -> Vec<Check> {
    let mut out = Vec::new();
    let hd_closed = hookdock.closed.as_ref();
    if let (Some(h), Some(d)) = (hd_closed, durable.and_then(|d| d.closed.as_ref())) {
        let throughput = ratio(h.req_per_sec, d.req_per_sec);
        out.push(Check {
            what: "throughput vs durable baseline".into(),
            value: throughput,
            limit: 0.8,
            unit: "x (min)".into(),
            pass: throughput >= 0.8,
        });
        let cpu = ratio(h.server_cpu_us_per_req, d.server_cpu_us_per_req);
        out.push(Check {
            what: "server CPU per request vs durable baseline".into(),
            value: cpu,
            limit: 1.3,
            unit: "x (max)".into(),
            pass: cpu <= 1.3,
        });
    }
    if let Some(o) = &hookdock.open {
        out.push(Check {
            what: format!("open-loop p99 at {}/s", o.setting),
            value: o.latency.p99_ms,
            limit: 3.0,
            unit: "ms (max)".into(),
            pass: o.ok > 0 && o.latency.p99_ms < 3.0,
        });
    }
    let rss_mb = hookdock.peak_rss_kb as f64 / 1024.0;
    out.push(Check {
        what: "peak RSS (VmHWM) under load".into(),
        value: rss_mb,
        limit: 60.0,
        unit: "MB (max)".into(),
        pass: hookdock.peak_rss_kb > 0 && rss_mb < 60.0,
    });
    out
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
    }
    s
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

    #[test]
    fn checks_pass_and_fail_at_the_limits() {
        let durable = target("durable", 7700.0, 200.0, 1.9, 10_000);
        let good = target("hookdock", 0.8 * 7700.0, 260.0, 2.9, 59 * 1024);
        assert!(checks(&good, Some(&durable)).iter().all(|c| c.pass));

        let bad = target("hookdock", 6000.0, 261.0, 3.0, 60 * 1024);
        let c = checks(&bad, Some(&durable));
        assert_eq!(c.len(), 4);
        assert!(
            !c[0].pass && !c[1].pass && !c[2].pass && !c[3].pass,
            "{c:?}"
        );

        // Without the durable baseline only the absolute targets are checked.
        assert_eq!(checks(&good, None).len(), 2);
    }

    #[test]
    fn table_lists_every_phase() {
        let t = table(&[target("memory", 11800.0, 150.0, 1.0, 20_000)]);
        assert!(t.contains("closed 64c") && t.contains("open 1000/s"), "{t}");
        assert!(t.contains("19.5 MB"), "{t}");
    }
}
