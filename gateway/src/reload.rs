//! Settings that change while the gateway runs (SIGHUP re-reads the
//! configuration file): the credentials table and policy, the predefined
//! topics, the topic ACL, the per-sensor timers and limits, and the
//! admission bounds. New connections get them; sessions already there keep
//! what they started with, but for the ACL, which their next checks use
//! (each worker hands it to its sessions when it takes the new settings).
//! What can only change with a restart (addresses, the broker, workers,
//! the store, ...) is named, and left as it was.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::auth::AuthTable;
use crate::config::{Config, ConfigError};
use crate::session::SessionConfig;

/// The settings new connections use, swapped as a whole on a reload.
#[derive(Debug, Clone)]
pub struct Current {
    /// What every new session runs with.
    pub session: Arc<SessionConfig>,
    /// Who may connect, and as whom upstream.
    pub auth: Arc<AuthTable>,
    /// The admission bounds (gateway-wide; what was counted stays).
    pub admission: crate::admission::Limits,
}

/// The live settings shared by every worker: a generation number read on
/// each datagram (one atomic load) and the settings behind it.
#[derive(Debug)]
pub struct Live {
    generation: AtomicU64,
    current: RwLock<Current>,
}

impl Live {
    /// Starts at generation 0 with these settings.
    pub fn new(current: Current) -> Self {
        Self { generation: AtomicU64::new(0), current: RwLock::new(current) }
    }

    /// Changes with every [`Live::replace`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The settings now, and their generation.
    pub fn get(&self) -> Option<(u64, Current)> {
        let current = self.current.read().ok()?;
        Some((self.generation(), current.clone()))
    }

    /// New settings for new connections.
    pub fn replace(&self, next: Current) {
        if let Ok(mut current) = self.current.write() {
            *current = next;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// What a reload found.
#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    /// The configuration in force from now on: the new file's reloadable
    /// parts on the old one.
    pub config: Config,
    /// Reloadable keys that changed.
    pub applied: Vec<&'static str>,
    /// Keys that changed but need a restart (not applied).
    pub restart_needed: Vec<&'static str>,
}

/// Takes what can change without a restart from `new` onto `old`.
pub fn merge(old: &Config, new: &Config) -> Reload {
    let mut config = old.clone();
    let mut applied = Vec::new();
    let mut take = |changed: bool, key: &'static str| {
        if changed {
            applied.push(key);
        }
    };
    take(old.auth != new.auth, "auth");
    config.auth = new.auth.clone();
    take(old.clients != new.clients, "clients");
    config.clients = new.clients.clone();
    take(old.predefined != new.predefined, "predefined");
    config.predefined = new.predefined.clone();
    take(old.acl != new.acl, "acl");
    config.acl = new.acl.clone();
    take(
        old.broker.username != new.broker.username || old.broker.password != new.broker.password,
        "broker.username/password",
    );
    config.broker.username = new.broker.username.clone();
    config.broker.password = new.broker.password.clone();
    take(old.admission != new.admission, "admission");
    config.admission = new.admission.clone();
    take(old.timers != new.timers, "timers");
    config.timers = new.timers.clone();
    // Per-sensor limits; the session limit and expiry are the gateway's.
    let limits = crate::config::LimitsSection {
        max_sessions: old.limits.max_sessions,
        session_expiry_secs: old.limits.session_expiry_secs,
        ..new.limits.clone()
    };
    take(old.limits != limits, "limits");
    config.limits = limits;
    // Per-sensor sleep buffers; the totals are shared by every session.
    let sleep = crate::config::SleepSection {
        total_buffer_messages: old.sleep.total_buffer_messages,
        total_buffer_bytes: old.sleep.total_buffer_bytes,
        ..new.sleep.clone()
    };
    take(old.sleep != sleep, "sleep");
    config.sleep = sleep;

    let mut restart_needed = Vec::new();
    let mut differs = |changed: bool, key: &'static str| {
        if changed {
            restart_needed.push(key);
        }
    };
    differs(config.gateway != new.gateway, "gateway");
    differs(config.broker != new.broker, "broker");
    differs(config.discovery != new.discovery, "discovery");
    differs(config.qos_minus_one != new.qos_minus_one, "qos_minus_one");
    differs(config.monitoring != new.monitoring, "monitoring");
    differs(old.dtls != new.dtls, "dtls");
    differs(config.serial != new.serial, "serial");
    differs(config.limits.max_sessions != new.limits.max_sessions, "limits.max_sessions");
    differs(
        config.limits.session_expiry_secs != new.limits.session_expiry_secs,
        "limits.session_expiry_secs",
    );
    differs(
        config.sleep.total_buffer_messages != new.sleep.total_buffer_messages
            || config.sleep.total_buffer_bytes != new.sleep.total_buffer_bytes,
        "sleep.total_buffer_*",
    );
    Reload { config, applied, restart_needed }
}

/// The settings of a merged configuration; the gateway-wide sleep buffer
/// total stays the one the sessions share.
pub fn settings(config: &Config, before: &Current) -> Result<Current, ConfigError> {
    let mut session = config.session_config()?;
    session.buffer_total = before.session.buffer_total.clone();
    Ok(Current {
        session: Arc::new(session),
        auth: Arc::new(config.auth_table()?),
        admission: config.admission.limits()?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, "test").unwrap()
    }

    #[test]
    fn reloadable_parts_are_taken_and_the_rest_named() {
        let old = parse("[gateway]\nlisten = \"127.0.0.1:1\"\n");
        let new = parse(
            "[gateway]\nlisten = \"127.0.0.1:2\"\n[auth]\nunknown_clients = \"refuse\"\n\
             [[predefined]]\nid = 7\nname = \"a/b\"\n[limits]\nmax_sessions = 5\nmax_inflight = 3\n\
             [acl]\npublish = [\"a/#\"]\n",
        );
        let r = merge(&old, &new);
        assert_eq!(r.applied, ["auth", "predefined", "acl", "limits"]);
        assert!(settings(&r.config, &current(&old)).unwrap().session.acl.is_some());
        assert_eq!(r.restart_needed, ["gateway", "limits.max_sessions"]);
        assert_eq!(r.config.gateway.listen, "127.0.0.1:1", "not applied");
        assert_eq!(r.config.limits.max_sessions, 0);
        assert_eq!(r.config.limits.max_inflight, 3);
        assert_eq!(r.config.auth.unknown_clients, "refuse");
        assert_eq!(r.config.predefined.len(), 1);
    }

    fn current(c: &Config) -> Current {
        Current {
            session: Arc::new(c.session_config().unwrap()),
            auth: Arc::new(c.auth_table().unwrap()),
            admission: c.admission.limits().unwrap(),
        }
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let c = parse("[[clients]]\nclient_id = \"s1\"\npassword = \"p\"\n");
        let r = merge(&c, &c.clone());
        assert!(r.applied.is_empty() && r.restart_needed.is_empty());
        assert_eq!(r.config, c);
    }

    #[test]
    fn new_settings_keep_the_shared_buffer_total_and_bump_the_generation() {
        let c = parse("");
        let first = settings(&c, &current(&c)).unwrap();
        let live = Live::new(first.clone());
        assert_eq!(live.generation(), 0);
        let next = settings(&parse("[auth]\nunknown_clients = \"refuse\"\n"), &first).unwrap();
        live.replace(next);
        let (generation, now) = live.get().unwrap();
        assert_eq!(generation, 1);
        assert!(!now.auth.allow_unknown);
        assert!(Arc::ptr_eq(&now.session.buffer_total, &first.session.buffer_total));
    }
}
