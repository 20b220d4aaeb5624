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

#[cfg(test)]
mod tests {
    #[test]
    fn raising_is_allowed() {
        let n = super::raise_open_files();
        assert!(n.as_ref().is_ok_and(|n| *n >= 1024), "{n:?}");
    }
}
