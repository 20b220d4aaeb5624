//! Process limits the gateway raises at start.

/// Raises the soft limit on open files to the hard limit, so that many
/// upstream connections (one per sensor) fit. Returns the new soft limit.
pub fn raise_open_files() -> std::io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let target = limit.maximum;
    if limit.current == target {
        return Ok(limit.current.unwrap_or(u64::MAX));
    }
    setrlimit(Resource::Nofile, Rlimit { current: target, maximum: limit.maximum })?;
    Ok(target.unwrap_or(u64::MAX))
}

/// Descriptors kept for everything but the sensors' broker connections:
/// the listeners, the store, the log, the monitoring connections, the
/// gateway's own broker connection.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// The most sessions the open files limit allows, each holding one broker
/// connection, with [`RESERVED_DESCRIPTORS`] kept back; and the bound to
/// apply given the configured `limits.max_sessions` (`None`: not set). A
/// configured bound above the budget is lowered to it (the second value
/// says so), so a flood of sessions can never take the last descriptor.
pub fn session_budget(open_files: u64, configured: Option<usize>) -> (usize, bool) {
    let budget = usize::try_from(open_files.saturating_sub(RESERVED_DESCRIPTORS).max(1))
        .unwrap_or(usize::MAX);
    match configured {
        Some(n) if n <= budget => (n, false),
        Some(_) => (budget, true),
        None => (budget, false),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_session_budget_keeps_descriptors_back() {
        use super::session_budget;
        assert_eq!(session_budget(1024, None), (960, false));
        assert_eq!(session_budget(20_000, Some(500)), (500, false));
        assert_eq!(session_budget(1024, Some(5000)), (960, true));
        assert_eq!(session_budget(10, None), (1, false));
        assert!(session_budget(u64::MAX, None).0 > 1_000_000);
    }

    #[test]
    fn raising_is_allowed() {
        let n = super::raise_open_files();
        assert!(n.as_ref().is_ok_and(|n| *n >= 1024), "{n:?}");
    }
}
