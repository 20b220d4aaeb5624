//! Named points where a test can make the gateway kill itself with
//! SIGKILL, to prove that what the store promises holds at that moment;
//! and a session store disk that a test can fill and free.
//!
//! `MQTTSN_FAILPOINT=<name>:<n>` in the environment kills the process the
//! `n`th time it reaches the point `<name>` (`n` defaults to 1). Without
//! the variable every point costs one relaxed atomic load.
//!
//! `MQTTSN_STORE_FULL=<file>` in the environment makes every write of the
//! session store fail as on a full disk (ENOSPC) while `<file>` exists:
//! redb itself sees the I/O error (the store's file is opened through
//! [`FullDisk`]), so the gateway's recovery is the one a real full disk
//! gets. Without the variable the store opens its file as usual.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use redb::backends::FileBackend;
use redb::StorageBackend;

/// The variable that names the switch file of [`DiskFull::File`].
pub const STORE_FULL_VAR: &str = "MQTTSN_STORE_FULL";

/// The points, in the order a message passes them.
pub const POINTS: [&str; 4] = [
    // A write is committed; its outputs are not out yet.
    "store-committed",
    // A message for a sleeper is stored; the broker is not yet told.
    "stored-before-ack",
    // The sensor acknowledged a buffered message; the deletion is not
    // written yet.
    "acked-before-delete",
    // A sleeper is awake and part of its buffer delivered.
    "mid-flush",
];

struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("MQTTSN_FAILPOINT").ok()?;
            let (name, at) = match v.split_once(':') {
                Some((n, at)) => (n.to_owned(), at.parse().unwrap_or(1)),
                None => (v, 1),
            };
            if !POINTS.contains(&name.as_str()) {
                tracing::warn!("MQTTSN_FAILPOINT names no failpoint: {name} (known: {POINTS:?})");
            }
            Some(Armed { name, at, hits: AtomicU64::new(0) })
        })
        .as_ref()
}

/// Reaches the point `name`.
pub fn hit(name: &str) {
    let Some(a) = armed() else { return };
    if a.name == name && a.hits.fetch_add(1, Ordering::Relaxed) + 1 == a.at {
        tracing::error!("failpoint {name} reached: SIGKILL");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// Says when the store's disk is full.
#[derive(Debug, Clone)]
pub enum DiskFull {
    /// Full while this file exists (`MQTTSN_STORE_FULL`).
    File(PathBuf),
    /// Full while this is true (unit tests).
    Flag(Arc<AtomicBool>),
}

impl DiskFull {
    /// The switch named by `MQTTSN_STORE_FULL`, if set.
    pub fn from_env() -> Option<Self> {
        std::env::var_os(STORE_FULL_VAR).filter(|v| !v.is_empty()).map(|v| Self::File(v.into()))
    }

    fn is_full(&self) -> bool {
        match self {
            Self::File(path) => path.exists(),
            Self::Flag(flag) => flag.load(Ordering::Relaxed),
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.is_full() {
            // ENOSPC, as the kernel reports a full disk.
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(())
    }
}

/// redb's file backend whose writes, resizes and syncs fail while the
/// disk is [full](DiskFull); reads always work.
#[derive(Debug)]
pub struct FullDisk {
    inner: FileBackend,
    full: DiskFull,
}

impl FullDisk {
    /// `inner`, failing while `full` says so.
    pub fn new(inner: FileBackend, full: DiskFull) -> Self {
        Self { inner, full }
    }
}

impl StorageBackend for FullDisk {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.full.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        self.full.check()?;
        self.inner.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.full.check()?;
        self.inner.write(offset, data)
    }
}
