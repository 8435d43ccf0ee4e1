//! What the kernel says about a process and the machine: CPU time from `/proc/<pid>/stat`
//! (and per thread from `/proc/<pid>/task/<tid>/stat`), peak resident memory from
//! `/proc/<pid>/status`, machine-wide busy time from `/proc/stat`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};

/// Clock ticks per second, the unit of the CPU times in `/proc`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// `utime + stime` of all threads of a process, in clock ticks, from the text of
/// `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("no ')' in /proc/<pid>/stat")?;
    ticks_after_name(rest)
}

/// `utime + stime` from the fields after a `stat` line's command name.
fn ticks_after_name(rest: &str) -> anyhow::Result<u64> {
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.len() < 13 {
        bail!("/proc/<pid>/stat has only {} fields", fields.len() + 2);
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    Ok(utime + stime)
}

/// The command name (field 2, a thread's name in a task's `stat`) and its `utime + stime`.
pub fn parse_stat_name_and_ticks(stat: &str) -> anyhow::Result<(String, u64)> {
    let open = stat.find('(').context("no '(' in stat")?;
    let close = stat.rfind(')').context("no ')' in stat")?;
    let name = stat
        .get(open + 1..close)
        .context("the name in stat is not enclosed in parentheses")?;
    Ok((name.to_owned(), ticks_after_name(&stat[close + 1..])?))
}

/// A process's live threads at one instant: thread id to its name and CPU time. Threads that
/// end between the listing and the read are left out.
pub type Threads = BTreeMap<u32, (String, Duration)>;

pub fn threads_cpu(pid: u32) -> anyhow::Result<Threads> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = Threads::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry.with_context(|| format!("reading {dir}"))?;
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let path = entry.path().join("stat");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let (name, ticks) = parse_stat_name_and_ticks(&text)
            .with_context(|| format!("parsing {}", path.display()))?;
        threads.insert(tid, (name, ticks_to_duration(ticks)));
    }
    Ok(threads)
}

/// Server CPU per request by thread name over a window, in µs, largest first: each thread
/// alive at the end, `after` minus `before` (a thread started in the window counts from zero),
/// summed per name (a runtime's workers share one). The time of threads that ended in the
/// window is only in the process's total: what the live threads do not account for is listed
/// as `(ended threads)`.
pub fn per_request_by_thread(
    before: &Threads,
    after: &Threads,
    process_total: Duration,
    requests: u64,
) -> Vec<(String, f64)> {
    let n = requests.max(1) as f64;
    let mut by_name: BTreeMap<&str, Duration> = BTreeMap::new();
    let mut counted = Duration::ZERO;
    for (tid, (name, end)) in after {
        let start = before.get(tid).map(|t| t.1).unwrap_or_default();
        let spent = end.saturating_sub(start);
        counted += spent;
        *by_name.entry(name).or_default() += spent;
    }
    let mut rows: Vec<(String, f64)> = by_name
        .into_iter()
        .filter(|(_, spent)| !spent.is_zero())
        .map(|(name, spent)| (name.to_owned(), spent.as_secs_f64() * 1e6 / n))
        .collect();
    let ended = process_total.saturating_sub(counted);
    if !ended.is_zero() {
        rows.push(("(ended threads)".to_owned(), ended.as_secs_f64() * 1e6 / n));
    }
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows
}

/// A value in kB from `/proc/<pid>/status` (`VmHWM`, `VmRSS`, …).
pub fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Busy ticks summed over all CPUs, from the first line of `/proc/stat`
/// (`cpu user nice system idle iowait irq softirq steal …`).
pub fn parse_machine_busy_ticks(stat: &str) -> anyhow::Result<u64> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("/proc/stat value"))
        .collect::<anyhow::Result<_>>()?;
    if values.len() < 8 {
        bail!("/proc/stat cpu line is too short");
    }
    // user nice system (skip idle, iowait) irq softirq steal; guest time is inside user.
    Ok(values[0] + values[1] + values[2] + values[5] + values[6] + values[7])
}

pub fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_micros(ticks * 1_000_000 / clock_ticks_per_sec())
}

pub fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(ticks_to_duration(parse_stat_cpu_ticks(&text)?))
}

pub fn self_cpu() -> anyhow::Result<Duration> {
    process_cpu(std::process::id())
}

/// Peak resident set size (`VmHWM`) in kB.
pub fn peak_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kb(&text, "VmHWM").with_context(|| format!("no VmHWM in {path}"))
}

pub fn machine_busy() -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    Ok(ticks_to_duration(parse_machine_busy_ticks(&text)?))
}

/// CPU times at one instant: the server under test (in all and per thread name), this process
/// (the load generator), and the whole machine.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub server: Duration,
    pub server_threads: Threads,
    pub client: Duration,
    pub machine: Duration,
}

impl Snapshot {
    pub fn take(server_pid: u32) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            server_threads: threads_cpu(server_pid)?,
            server: process_cpu(server_pid)?,
            client: self_cpu()?,
            machine: machine_busy()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_name() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat).unwrap(), 325);
        assert!(parse_stat_cpu_ticks("1 (x) S 1 2").is_err());
        assert!(parse_stat_cpu_ticks("no paren").is_err());
    }

    #[test]
    fn own_stat_parses() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        parse_stat_cpu_ticks(&text).unwrap();
        assert!(peak_rss_kb(std::process::id()).unwrap() > 0);
        machine_busy().unwrap();
    }

    #[test]
    fn thread_stat_name_and_ticks() {
        let stat = "4243 (tokio-rt-worker) S 1 4242 4242 0 -1 4194560 12 0 0 0 \
                    30 7 0 0 20 0 9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(
            parse_stat_name_and_ticks(stat).unwrap(),
            ("tokio-rt-worker".to_owned(), 37)
        );
        let odd = "7 (a (b) c) R 1 2 3 4 5 6 7 8 9 10 4 5 0 0";
        assert_eq!(
            parse_stat_name_and_ticks(odd).unwrap(),
            ("a (b) c".to_owned(), 9)
        );
        assert!(parse_stat_name_and_ticks("7 no name 1 2").is_err());
    }

    #[test]
    fn a_busy_thread_shows_under_its_name() {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let spin = std::thread::Builder::new()
            .name("procfs-spin".into())
            .spawn(move || {
                let mut x = 0u64;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                x
            })
            .unwrap();
        // Polled with a deadline: the kernel counts whole ticks, so the thread shows once one
        // has passed.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Duration::ZERO;
        while seen.is_zero() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            let threads = threads_cpu(std::process::id()).unwrap();
            seen = threads
                .values()
                .filter(|(name, _)| name == "procfs-spin")
                .map(|t| t.1)
                .sum();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spin.join().unwrap();
        assert!(
            seen > Duration::ZERO,
            "the spinning thread's CPU was never seen"
        );
    }

    #[test]
    fn per_request_rows_subtract_per_thread_sum_per_name_and_keep_ended_threads() {
        let ms = Duration::from_millis;
        let t = |name: &str, spent: u64| (name.to_owned(), ms(spent));
        let before = Threads::from([
            (1, t("worker", 100)),
            (2, t("worker", 60)),
            (3, t("writer", 50)),
            // Ends within the window, after 10 ms more (in the process's total only).
            (4, t("worker", 500)),
        ]);
        let after = Threads::from([
            (1, t("worker", 300)),
            (2, t("worker", 90)),
            (3, t("writer", 450)),
            (5, t("new", 20)),
            (6, t("idle", 0)),
        ]);
        // Live threads: workers 200 + 30, writer 400, new 20; the process spent 660 in all.
        let rows = per_request_by_thread(&before, &after, ms(660), 1000);
        let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, ["writer", "worker", "new", "(ended threads)"]);
        let us: Vec<f64> = rows
            .iter()
            .map(|r| (r.1 * 1000.0).round() / 1000.0)
            .collect();
        assert_eq!(us, [400.0, 230.0, 20.0, 10.0]);
        assert_eq!(
            per_request_by_thread(&before, &before, ms(0), 0),
            Vec::new()
        );
    }

    #[test]
    fn status_values() {
        let status =
            "Name:\thookdock\nVmPeak:\t  200000 kB\nVmHWM:\t   41234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(41234));
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(40000));
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn machine_busy_line() {
        let stat = "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(parse_machine_busy_ticks(stat).unwrap(), 161);
        assert!(parse_machine_busy_ticks("cpu0 1 2\n").is_err());
    }
}
