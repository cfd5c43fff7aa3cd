//! CPU time and peak memory of this process (`getrusage`) and of another
//! one by pid (`/proc/<pid>/stat` and `status`, Linux only), for the
//! bench's CPU-per-posting and RSS figures; this process's current RSS
//! and a peak that can be reset (`/proc/self/status`, `clear_refs`), so a
//! stage's peak is its own.

use std::time::Duration;

/// CPU time (user + system) and peak resident set of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu: Duration,
    /// Peak RSS in bytes (`None` when the platform does not say).
    pub peak_rss: Option<u64>,
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

/// `getrusage(who)`: CPU time (user + system) and peak RSS in bytes.
fn rusage(who: libc::c_int) -> Usage {
    // SAFETY: `getrusage` only writes the struct we pass, which is zeroed
    // plain data (an all-zero `rusage` is a valid value).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a live `rusage`; `who` is one of the
    // RUSAGE_* constants (the two callers below).
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    if rc != 0 {
        return Usage::default();
    }
    Usage {
        cpu: timeval(ru.ru_utime) + timeval(ru.ru_stime),
        // Linux reports ru_maxrss in KiB.
        peak_rss: Some(ru.ru_maxrss.max(0) as u64 * 1024),
    }
}

/// This process so far.
pub fn own() -> Usage {
    rusage(libc::RUSAGE_SELF)
}

/// CPU time of this process's children that have ended and been waited
/// for (`RUSAGE_CHILDREN`): the difference around one child's run is its
/// CPU time. Peak RSS is left out (it is the largest child's, not this
/// one's).
pub fn children() -> Usage {
    Usage {
        peak_rss: None,
        ..rusage(libc::RUSAGE_CHILDREN)
    }
}

/// Another process so far (Linux `/proc`), or `None` when it cannot be read.
pub fn of_pid(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu = parse_stat_cpu(&stat, clock_ticks_per_s())?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    Some(Usage {
        cpu,
        peak_rss: status.as_deref().and_then(parse_vm_hwm),
    })
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: `sysconf` has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces, so fields
/// are counted after its closing parenthesis.
fn parse_stat_cpu(stat: &str, ticks_per_s: u64) -> Option<Duration> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: field 3 (state) is index 0, so 14 and 15 are 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_s as f64,
    ))
}

/// `VmHWM` (peak RSS) of a `/proc/<pid>/status` text, in bytes.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    parse_status_kib(status, "VmHWM:")
}

/// A `<field> <n> kB` line of a `/proc/<pid>/status` text, in bytes.
fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// This process's resident set now (`VmRSS`), in bytes.
pub fn current_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&status, "VmRSS:")
}

/// This process's peak resident set (`VmHWM`) since it started or since
/// the last successful [`reset_peak_rss`], in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

/// Resets this process's peak resident set to its current one (writing
/// `5` to `/proc/self/clear_refs`, Linux ≥ 4.0); false when it cannot,
/// and [`peak_rss`] is then the peak of the process's whole life.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_is_read_after_a_name_with_spaces_and_parentheses() {
        let stat = "1234 (nats (srv) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0";
        assert_eq!(parse_stat_cpu(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_cpu("garbage", 100), None);
    }

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn the_current_and_peak_rss_are_read_and_the_peak_can_be_reset() {
        let status = "VmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(1024 * 1024));
        let now = current_rss().expect("Linux /proc");
        assert!(now > 0);
        // Touch 64 MiB, give it back: the peak stays above the current RSS
        // until it is reset (the test threads around may move both a bit).
        let big = vec![1u8; 64 << 20];
        assert_eq!(big.iter().map(|&b| u64::from(b)).sum::<u64>(), 64 << 20);
        drop(big);
        let before = peak_rss().expect("Linux /proc");
        assert!(before >= now + (32 << 20), "{before} < {now} + 32 MiB");
        if reset_peak_rss() {
            let after = peak_rss().expect("Linux /proc");
            assert!(after < before, "{after} >= {before}");
        }
    }

    #[test]
    fn own_usage_is_positive() {
        let u = own();
        assert!(u.peak_rss.is_some_and(|r| r > 0));
    }
}
