//! The session store on disk: CleanSession-false sessions survive a
//! restart, and a SIGKILL at any moment.
//!
//! [redb](https://docs.rs/redb) holds two tables: one record per session
//! (keyed by ClientId) and one entry per buffered message (keyed by
//! ClientId and a sequence number). A writer thread commits what the
//! dispatcher hands it in groups: everything that arrived while the
//! previous commit ran goes into the next transaction, so a busy gateway
//! pays one fsync for many writes. The dispatcher holds back a session's
//! outputs (acknowledgements to either side, PUBLISHes) until the write
//! of the state that produced them is committed, which is what makes an
//! acknowledgement safe.
//!
//! A commit that fails is retried with backoff (100 ms doubling to 5 s)
//! until it succeeds, with whatever queued up meanwhile in the same
//! transaction. After an I/O error (a full disk, say) redb refuses every
//! further transaction on that handle ("Previous I/O error occurred"), so
//! the writer drops the handle and opens the file again before the next
//! try: when the disk recovers, the store does too, without a restart. An
//! outage is logged once when it starts, once a minute while it lasts and
//! once when it ends; the workers are told while it lasts, and refuse
//! what would only pile up meanwhile (see docs/sleeping-sensors.md).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::endpoint::outage::{human, Outage, Report};
use crate::failpoint::{DiskFull, FullDisk};
use crate::metrics::Metrics;
use crate::session::Persist;

const SESSIONS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("messages");

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("session store {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<redb::Error>,
    },
    /// A file operation failed.
    #[error("session store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One stored session as read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The ClientId.
    pub client_id: String,
    /// The session record.
    pub record: Vec<u8>,
    /// Buffered messages by key, in order.
    pub messages: Vec<(u64, Vec<u8>)>,
}

/// What [`Store::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The store.
    pub store: Store,
    /// Every stored session.
    pub sessions: Vec<Loaded>,
    /// A store that could not be read was moved here (and a new one made).
    pub moved_aside: Option<(PathBuf, String)>,
}

/// The open store.
#[derive(Debug)]
pub struct Store {
    /// `None` after an I/O error, until the file is open again.
    db: Option<Database>,
    path: PathBuf,
    /// A disk that tests can fill ([`crate::failpoint`]).
    fault: Option<DiskFull>,
}

/// One session's writes, tagged with the ticket its worker waits on.
#[derive(Debug)]
pub struct Write {
    /// The worker whose session this is; completion is reported to it.
    pub worker: usize,
    /// Completion is reported with this ticket (a worker's tickets only
    /// grow).
    pub ticket: u64,
    /// The session.
    pub client_id: Arc<str>,
    /// What changed.
    pub persist: Persist,
}

/// Hands writes to the writer thread.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    tx: std::sync::mpsc::Sender<Write>,
    metrics: Arc<Metrics>,
}

impl StoreWriter {
    /// Queues a write; its ticket comes back on the completion channel
    /// once it is on disk.
    pub fn submit(&self, w: Write) {
        Metrics::inc(&self.metrics.store_waiting);
        if self.tx.send(w).is_err() {
            Metrics::dec(&self.metrics.store_waiting);
            error!("the session store writer has stopped");
        }
    }
}

impl StoreError {
    /// True when the file is there but is not a readable store.
    fn is_corruption(&self) -> bool {
        match self {
            Self::Db { source, .. } => match &**source {
                redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => true,
                redb::Error::Io(e) => matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ),
                _ => false,
            },
            Self::Io { .. } => false,
        }
    }

    /// True after an I/O error: redb refuses every later transaction on
    /// that handle, so the file must be opened again.
    fn needs_reopen(&self) -> bool {
        match self {
            Self::Db { source, .. } => {
                matches!(&**source, redb::Error::Io(_) | redb::Error::PreviousIo)
            }
            Self::Io { .. } => false,
        }
    }
}

fn db_error(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db { path: path.to_owned(), source: Box::new(e.into()) }
}

/// Seconds since the Unix epoch.
pub fn wall_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens (or makes) the store at `path` and reads every session. A
    /// store that cannot be opened or read is renamed to
    /// `<path>.corrupt-<unix time>` (never deleted) and a new one is made.
    pub fn open(path: &Path) -> Result<Opened, StoreError> {
        let fault = DiskFull::from_env();
        if let Some(f) = &fault {
            warn!(
                "{} is set: the session store's disk fails while {f:?} says so",
                crate::failpoint::STORE_FULL_VAR
            );
        }
        Self::open_with(path, fault)
    }

    /// [`Store::open`] on a disk that may be made to fail.
    fn open_with(path: &Path, fault: Option<DiskFull>) -> Result<Opened, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::Io { path: dir.to_owned(), source })?;
        }
        match Self::open_and_load(path, &fault) {
            Ok((store, sessions)) => Ok(Opened { store, sessions, moved_aside: None }),
            // In use by another gateway, or not readable at all (a
            // permission, say): the operator must act; nothing is moved.
            Err(e) if !e.is_corruption() => Err(e),
            Err(why) => {
                let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), wall_now()));
                std::fs::rename(path, &aside)
                    .map_err(|source| StoreError::Io { path: path.to_owned(), source })?;
                let (store, sessions) = Self::open_and_load(path, &fault)?;
                Ok(Opened { store, sessions, moved_aside: Some((aside, why.to_string())) })
            }
        }
    }

    fn open_and_load(
        path: &Path,
        fault: &Option<DiskFull>,
    ) -> Result<(Self, Vec<Loaded>), StoreError> {
        let db = create(path, fault).map_err(|e| db_error(path, e))?;
        let store = Self { db: Some(db), path: path.to_owned(), fault: fault.clone() };
        let sessions = store.load()?;
        Ok((store, sessions))
    }

    /// The open handle, the file opened again first if an I/O error
    /// dropped it (the file as it is: nothing is read or moved aside).
    fn db(&mut self, metrics: &Metrics) -> Result<&Database, StoreError> {
        if self.db.is_none() {
            let db = create(&self.path, &self.fault).map_err(|e| db_error(&self.path, e))?;
            Metrics::inc(&metrics.store_reopens);
            // Counted, not logged: on a nearly full disk the file may open
            // and the commit fail again, at every try.
            tracing::debug!("session store {} opened again", self.path.display());
            self.db = Some(db);
        }
        self.db.as_ref().ok_or_else(|| db_error(&self.path, redb::Error::PreviousIo))
    }

    fn load(&self) -> Result<Vec<Loaded>, StoreError> {
        let p = &self.path;
        let db = self.db.as_ref().ok_or_else(|| db_error(p, redb::Error::PreviousIo))?;
        // Make the tables exist, so an empty store reads as empty.
        let tx = db.begin_write().map_err(|e| db_error(p, e))?;
        tx.open_table(SESSIONS).map_err(|e| db_error(p, e))?;
        tx.open_table(MESSAGES).map_err(|e| db_error(p, e))?;
        tx.commit().map_err(|e| db_error(p, e))?;
        let tx = db.begin_read().map_err(|e| db_error(p, e))?;
        let sessions = tx.open_table(SESSIONS).map_err(|e| db_error(p, e))?;
        let messages = tx.open_table(MESSAGES).map_err(|e| db_error(p, e))?;
        let mut out = Vec::new();
        for row in sessions.iter().map_err(|e| db_error(p, e))? {
            let (k, v) = row.map_err(|e| db_error(p, e))?;
            let client_id = k.value().to_owned();
            let mut msgs = Vec::new();
            let range = messages
                .range((client_id.as_str(), 0)..=(client_id.as_str(), u64::MAX))
                .map_err(|e| db_error(p, e))?;
            for m in range {
                let (mk, mv) = m.map_err(|e| db_error(p, e))?;
                msgs.push((mk.value().1, mv.value().to_vec()));
            }
            out.push(Loaded { client_id, record: v.value().to_vec(), messages: msgs });
        }
        Ok(out)
    }

    /// Deletes a session (one the gateway could not restore, or that
    /// expired) at once.
    pub fn remove_now(&self, client_id: &str) -> Result<(), StoreError> {
        let p = &self.path;
        let db = self.db.as_ref().ok_or_else(|| db_error(p, redb::Error::PreviousIo))?;
        let tx = db.begin_write().map_err(|e| db_error(p, e))?;
        remove(&tx, client_id, p)?;
        tx.commit().map_err(|e| db_error(p, e))
    }

    /// Starts the writer thread. Each of the `workers` gets its completed
    /// tickets on its own channel, in order (a ticket stands for itself and
    /// all of that worker's before it). `failing` is told when the store
    /// starts failing to write (`true`) and when it writes again.
    pub fn start_writer(
        mut self,
        metrics: Arc<Metrics>,
        workers: usize,
        failing: impl Fn(bool) + Send + 'static,
    ) -> (StoreWriter, Vec<mpsc::UnboundedReceiver<u64>>) {
        let (tx, rx) = std::sync::mpsc::channel::<Write>();
        let (done_tx, done_rx): (Vec<_>, Vec<_>) =
            (0..workers.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let m = metrics.clone();
        let spawned = std::thread::Builder::new().name("session-store".into()).spawn(move || {
            let metrics = m;
            let mut outage = Outage::default();
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                let mut delay = RETRY_FIRST;
                loop {
                    let started = Instant::now();
                    match self.commit(&batch, &metrics) {
                        Ok(()) => {
                            let us = started.elapsed().as_micros();
                            Metrics::inc(&metrics.store_commits);
                            let n = batch.len() as u64;
                            metrics.store_writes.fetch_add(n, Ordering::Relaxed);
                            Metrics::adjust(&metrics.store_waiting, n, 0);
                            metrics.store_commit_us.fetch_add(
                                u64::try_from(us).unwrap_or(u64::MAX),
                                Ordering::Relaxed,
                            );
                            if let Some(Report::Ended(d)) = outage.up(Instant::now()) {
                                Metrics::set(&metrics.store_failing, 0);
                                failing(false);
                                info!(
                                    outage_secs = d.as_secs(),
                                    writes = n,
                                    "session store writing again after {}: {n} writes that \
                                     waited are committed",
                                    human(d)
                                );
                            }
                            break;
                        }
                        Err(e) => {
                            // Nothing waiting on this write goes out until
                            // it is on disk: retry, with what queued up
                            // meanwhile.
                            Metrics::inc(&metrics.store_errors);
                            self.failed(&e);
                            let now = Instant::now();
                            if outage.down(now).is_some() {
                                Metrics::set(&metrics.store_failing, 1);
                                failing(true);
                                error!(
                                    "{e}: the session store cannot write; persistent sessions \
                                     wait (nothing acknowledged is lost) and their new \
                                     CONNECTs are refused until it can; retrying"
                                );
                            } else if let Some(Report::Ongoing(d)) = outage.tick(now) {
                                error!(
                                    outage_secs = d.as_secs(),
                                    writes = batch.len(),
                                    "the session store still cannot write after {}: {e}; {} \
                                     writes waiting",
                                    human(d),
                                    batch.len()
                                );
                            } else {
                                tracing::debug!("{e}; retrying in {delay:?}");
                            }
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(RETRY_MAX);
                            batch.extend(rx.try_iter());
                        }
                    }
                }
                crate::failpoint::hit("store-committed");
                // The last ticket of each worker in this batch.
                let mut last = vec![0u64; done_tx.len()];
                for w in &batch {
                    if let Some(t) = last.get_mut(w.worker) {
                        *t = (*t).max(w.ticket);
                    }
                }
                // A worker that has stopped no longer waits; the thread
                // ends when every writer handle is gone.
                for (tx, ticket) in done_tx.iter().zip(&last) {
                    if *ticket > 0 {
                        let _ = tx.send(*ticket);
                    }
                }
            }
        });
        if let Err(e) = spawned {
            error!("cannot start the session store writer: {e}");
        }
        (StoreWriter { tx, metrics }, done_rx)
    }

    /// After a failed commit: an I/O error poisoned the handle, so it is
    /// dropped (which releases the file's lock) and the next commit opens
    /// the file again.
    fn failed(&mut self, e: &StoreError) {
        if e.needs_reopen() {
            self.db = None;
        }
    }

    fn commit(&mut self, batch: &[Write], metrics: &Metrics) -> Result<(), StoreError> {
        let tx = self.db(metrics)?.begin_write().map_err(|e| db_error(&self.path, e))?;
        let p = &self.path;
        for w in batch {
            let cid: &str = &w.client_id;
            let ps = &w.persist;
            if ps.remove {
                remove(&tx, cid, p)?;
                continue;
            }
            {
                let mut messages = tx.open_table(MESSAGES).map_err(|e| db_error(p, e))?;
                for seq in &ps.delete {
                    messages.remove((cid, *seq)).map_err(|e| db_error(p, e))?;
                }
                for (seq, bytes) in &ps.put {
                    messages.insert((cid, *seq), bytes.as_slice()).map_err(|e| db_error(p, e))?;
                }
            }
            if let Some(record) = &ps.record {
                let mut sessions = tx.open_table(SESSIONS).map_err(|e| db_error(p, e))?;
                sessions.insert(cid, record.as_slice()).map_err(|e| db_error(p, e))?;
            }
        }
        tx.commit().map_err(|e| db_error(p, e))
    }
}

/// The first wait before a failed commit is tried again, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Opens (or makes) the store's file, through the failing disk if tests
/// asked for one.
fn create(path: &Path, fault: &Option<DiskFull>) -> Result<Database, redb::DatabaseError> {
    let Some(fault) = fault else { return Database::create(path) };
    // As `Database::create` opens it.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let backend = FullDisk::new(redb::backends::FileBackend::new(file)?, fault.clone());
    redb::Builder::new().create_with_backend(backend)
}

fn remove(tx: &redb::WriteTransaction, client_id: &str, p: &Path) -> Result<(), StoreError> {
    let mut sessions = tx.open_table(SESSIONS).map_err(|e| db_error(p, e))?;
    sessions.remove(client_id).map_err(|e| db_error(p, e))?;
    let mut messages = tx.open_table(MESSAGES).map_err(|e| db_error(p, e))?;
    messages
        .retain_in((client_id, 0)..=(client_id, u64::MAX), |_, _| false)
        .map_err(|e| db_error(p, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn persist(record: &[u8], put: &[(u64, &[u8])], delete: &[u64]) -> Persist {
        Persist {
            record: Some(record.to_vec()),
            put: put.iter().map(|(k, v)| (*k, v.to_vec())).collect(),
            delete: delete.to_vec(),
            remove: false,
            hold: true,
        }
    }

    #[test]
    fn writes_survive_a_reopen_and_removal_removes_everything() {
        let dir = std::env::temp_dir().join(format!("mqttsn-store-{}", std::process::id()));
        let path = dir.join("s.redb");
        let _ = std::fs::remove_dir_all(&dir);
        let opened = Store::open(&path).unwrap();
        assert!(opened.sessions.is_empty());
        let store = opened.store;
        let w = |ticket, cid: &str, persist| Write {
            worker: 0,
            ticket,
            client_id: Arc::from(cid),
            persist,
        };
        let mut store = store;
        store
            .commit(
                &[
                    w(1, "a", persist(b"ra", &[(1, b"m1"), (2, b"m2")], &[])),
                    w(2, "b", persist(b"rb", &[(1, b"x")], &[])),
                    w(3, "a", persist(b"ra2", &[(3, b"m3")], &[1])),
                ],
                &Metrics::default(),
            )
            .unwrap();
        drop(store);
        let opened = Store::open(&path).unwrap();
        assert!(opened.moved_aside.is_none());
        let mut s = opened.sessions;
        s.sort_by(|x, y| x.client_id.cmp(&y.client_id));
        assert_eq!(s[0].record, b"ra2");
        assert_eq!(s[0].messages, vec![(2, b"m2".to_vec()), (3, b"m3".to_vec())]);
        assert_eq!(s[1].messages, vec![(1, b"x".to_vec())]);
        opened.store.remove_now("a").unwrap();
        drop(opened.store);
        let s = Store::open(&path).unwrap().sessions;
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].client_id, "b");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_store_is_moved_aside_and_a_new_one_made() {
        let dir = std::env::temp_dir().join(format!("mqttsn-store-bad-{}", std::process::id()));
        let path = dir.join("s.redb");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, b"this is not a database, but it is long enough to look like one")
            .unwrap();
        let opened = Store::open(&path).unwrap();
        let (aside, why) = opened.moved_aside.expect("moved aside");
        assert!(aside.exists(), "{aside:?}");
        assert!(!why.is_empty());
        assert!(opened.sessions.is_empty());
        assert_eq!(
            std::fs::read(&aside).unwrap(),
            b"this is not a database, but it is long enough to look like one"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "not within 10 s: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn write(ticket: u64, cid: &str, persist: Persist) -> Write {
        Write { worker: 0, ticket, client_id: Arc::from(cid), persist }
    }

    #[test]
    fn redb_refuses_a_handle_after_an_io_error_and_a_reopen_clears_it() {
        let dir = std::env::temp_dir().join(format!("mqttsn-store-io-{}", std::process::id()));
        let path = dir.join("s.redb");
        let _ = std::fs::remove_dir_all(&dir);
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut store = Store::open_with(&path, Some(DiskFull::Flag(full.clone()))).unwrap().store;
        let m = Metrics::default();
        store.commit(&[write(1, "a", persist(b"r1", &[], &[]))], &m).unwrap();
        full.store(true, Ordering::Relaxed);
        let e = store.commit(&[write(2, "a", persist(b"r2", &[], &[]))], &m).unwrap_err();
        assert!(e.needs_reopen(), "{e}");
        assert!(e.to_string().contains("No space left on device"), "{e}");
        full.store(false, Ordering::Relaxed);
        // The disk is back, but the handle is not.
        let e = store.db.as_ref().unwrap().begin_write().map(drop).unwrap_err();
        assert!(matches!(redb::Error::from(e), redb::Error::PreviousIo));
        store.failed(&db_error(&path, redb::Error::PreviousIo));
        store.commit(&[write(2, "a", persist(b"r2", &[], &[]))], &m).unwrap();
        assert_eq!(m.store_reopens.load(Ordering::Relaxed), 1);
        drop(store);
        let opened = Store::open(&path).unwrap();
        assert!(opened.moved_aside.is_none());
        assert_eq!(opened.sessions[0].record, b"r2");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_writer_survives_a_full_disk_without_a_restart() {
        let dir = std::env::temp_dir().join(format!("mqttsn-store-full-{}", std::process::id()));
        let path = dir.join("s.redb");
        let _ = std::fs::remove_dir_all(&dir);
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store = Store::open_with(&path, Some(DiskFull::Flag(full.clone()))).unwrap().store;
        let metrics = Arc::new(Metrics::default());
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let told = failing.clone();
        let (writer, mut done) =
            store.start_writer(metrics.clone(), 1, move |f| told.store(f, Ordering::Relaxed));
        let mut done = done.remove(0);
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);

        writer.submit(write(1, "a", persist(b"a1", &[(1, b"m1")], &[])));
        until("the first commit", || done.try_recv() == Ok(1));

        // The disk fills: the writes wait, nothing completes.
        full.store(true, Ordering::Relaxed);
        writer.submit(write(2, "a", persist(b"a2", &[(2, b"m2")], &[1])));
        writer.submit(write(3, "b", persist(b"b1", &[], &[])));
        // A second error: the file was opened again, and that failed too.
        until("two failures", || get(&metrics.store_errors) >= 2);
        assert!(failing.load(Ordering::Relaxed));
        assert_eq!(get(&metrics.store_failing), 1);
        assert!(done.try_recv().is_err(), "nothing is reported committed while failing");
        writer.submit(write(4, "b", persist(b"b2", &[], &[])));
        until("the queued write counted", || get(&metrics.store_waiting) == 3);

        // Space comes back: everything that waited is committed, in one go.
        full.store(false, Ordering::Relaxed);
        until("the writes that waited", || done.try_recv() == Ok(4));
        assert!(!failing.load(Ordering::Relaxed));
        assert_eq!(get(&metrics.store_failing), 0);
        assert_eq!(get(&metrics.store_waiting), 0);
        assert_eq!(get(&metrics.store_reopens), 1);
        assert_eq!(get(&metrics.store_writes), 4);

        // And the store goes on as before.
        writer.submit(write(5, "a", persist(b"a3", &[], &[])));
        until("a later write", || done.try_recv() == Ok(5));
        drop(writer);
        // The writer thread lets the file go once every writer is gone.
        let mut opened = None;
        until("the file released", || {
            opened = Store::open(&path).ok();
            opened.is_some()
        });
        let mut s = opened.unwrap().sessions;
        s.sort_by(|x, y| x.client_id.cmp(&y.client_id));
        assert_eq!(s[0].record, b"a3");
        assert_eq!(s[0].messages, vec![(2, b"m2".to_vec())]);
        assert_eq!(s[1].record, b"b2");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
