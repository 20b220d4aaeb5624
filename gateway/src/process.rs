//! The process's own figures for `/metrics` (the standard `process_*`
//! metrics), read from `/proc/self` on Linux; elsewhere none.

/// What the process uses now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// When it started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// CPU time used, user and system, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in octets.
    pub resident_memory_bytes: u64,
    /// Open file descriptors (sockets included).
    pub open_fds: u64,
}

/// The figures now; `None` where `/proc` is not there.
pub fn figures() -> Option<Figures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    parse(&stat, &statm, &boot, ticks_per_second(), page_size(), fds)
}

#[cfg(target_os = "linux")]
fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

#[cfg(not(target_os = "linux"))]
fn ticks_per_second() -> u64 {
    100
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// The figures from the text of `/proc/self/stat`, `/proc/self/statm` and
/// `/proc/stat`.
fn parse(
    stat: &str,
    statm: &str,
    proc_stat: &str,
    ticks: u64,
    page: u64,
    open_fds: u64,
) -> Option<Figures> {
    // The command name (field 2) may hold spaces: fields count from after
    // its closing parenthesis, which is field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
    let btime: u64 =
        proc_stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let ticks = ticks.max(1) as f64;
    Some(Figures {
        start_time_seconds: btime as f64 + start as f64 / ticks,
        cpu_seconds: (utime + stime) as f64 / ticks,
        resident_memory_bytes: resident * page,
        open_fds,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn proc_text_is_read() {
        let stat = "4242 (mqttsn gate way) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    250 50 0 0 20 0 5 0 1000 123456789 2048 18446744073709551615";
        let f = parse(
            stat,
            "10000 2048 300 1 0 500 0\n",
            "cpu 1 2 3\nbtime 1700000000\n",
            100,
            4096,
            9,
        )
        .unwrap();
        assert_eq!(f.cpu_seconds, 3.0);
        assert_eq!(f.start_time_seconds, 1_700_000_010.0);
        assert_eq!(f.resident_memory_bytes, 2048 * 4096);
        assert_eq!(f.open_fds, 9);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_figures() {
        let f = figures().unwrap();
        assert!(f.resident_memory_bytes > 0 && f.open_fds > 0 && f.start_time_seconds > 1.6e9);
    }
}
