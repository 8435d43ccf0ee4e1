//! What the kernel says about a process and the machine: CPU time from `/proc/<pid>/stat`,
//! peak resident memory from `/proc/<pid>/status`, machine-wide busy time from `/proc/stat`.

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
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.len() < 13 {
        bail!("/proc/<pid>/stat has only {} fields", fields.len() + 2);
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    Ok(utime + stime)
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

/// CPU times at one instant: the server under test, this process (the load generator), and
/// the whole machine.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub server: Duration,
    pub client: Duration,
    pub machine: Duration,
}

impl Snapshot {
    pub fn take(server_pid: u32) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
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
