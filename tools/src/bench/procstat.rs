//! What the kernel says about processes and sockets: CPU time and
//! resident memory of a process (`/proc/PID/stat`, `/proc/PID/status`),
//! this process's and this thread's CPU clocks, the UDP receive-buffer drop
//! counter (`/proc/net/snmp`), and the open-file limit.

use std::time::Duration;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use rustix::time::{clock_gettime, ClockId};

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time.
    pub cpu: Duration,
    /// Resident set, in KiB.
    pub rss_kib: u64,
}

/// Reads `/proc/PID/stat` (utime + stime) and `/proc/PID/status` (VmRSS);
/// `None` when the process is gone or not readable.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count the
    // fields after the last ')'. utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let cpu = Duration::from_nanos((utime + stime).saturating_mul(1_000_000_000) / ticks);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(ProcSample { cpu, rss_kib })
}

fn clock(id: ClockId) -> Duration {
    let t = clock_gettime(id);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

/// CPU time of this whole process (every thread), nanosecond resolution.
pub fn process_cpu() -> Duration {
    clock(ClockId::ProcessCPUTime)
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    clock(ClockId::ThreadCPUTime)
}

/// `RcvbufErrors` of `Udp:` in `/proc/net/snmp` plus `Udp6RcvbufErrors` of
/// `/proc/net/snmp6`: datagrams the kernel dropped because a socket's
/// receive buffer was full, machine-wide. `None` when not readable.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let names = udp.next()?;
    let values = udp.next()?;
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    let v4: u64 = values.split_whitespace().nth(at)?.parse().ok()?;
    let v6 = std::fs::read_to_string("/proc/net/snmp6")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Udp6RcvbufErrors"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Some(v4 + v6)
}

/// The open-file limits after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// Raises the soft open-file limit to the hard one (no-op when it is
/// already there); when `needed` is above the hard limit too, tries to
/// raise both to `needed`, which only a process allowed to
/// (`CAP_SYS_RESOURCE`) may do, up to `fs.nr_open`. Returns what is in
/// force.
pub fn raise_open_files(needed: u64) -> FileLimit {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    if maximum != current {
        // Best effort: a refused raise leaves the old limit, reported below.
        let _ = setrlimit(Resource::Nofile, Rlimit { current: maximum, maximum });
    }
    if maximum.is_some_and(|m| m < needed) {
        let _ =
            setrlimit(Resource::Nofile, Rlimit { current: Some(needed), maximum: Some(needed) });
    }
    let now = getrlimit(Resource::Nofile);
    FileLimit { soft: now.current.unwrap_or(u64::MAX), hard: now.maximum }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id());
        assert!(s.is_some_and(|s| s.rss_kib > 0), "{s:?}");
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(5) {}
        assert!(thread_cpu() > Duration::ZERO && process_cpu() >= thread_cpu());
        assert!(sample(u32::MAX).is_none());
    }

    #[test]
    fn open_file_limit_is_raised() {
        let l = raise_open_files(0);
        assert!(l.hard.is_none_or(|h| l.soft == h), "{l:?}");
        // Asking for no more than is in force changes nothing.
        assert_eq!(raise_open_files(l.soft), l);
    }
}
