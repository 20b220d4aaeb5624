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

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::mpsc;
use tracing::error;

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
    db: Database,
    path: PathBuf,
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
}

impl StoreWriter {
    /// Queues a write; its ticket comes back on the completion channel
    /// once it is on disk.
    pub fn submit(&self, w: Write) {
        if self.tx.send(w).is_err() {
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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::Io { path: dir.to_owned(), source })?;
        }
        match Self::open_and_load(path) {
            Ok((store, sessions)) => Ok(Opened { store, sessions, moved_aside: None }),
            // In use by another gateway, or not readable at all (a
            // permission, say): the operator must act; nothing is moved.
            Err(e) if !e.is_corruption() => Err(e),
            Err(why) => {
                let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), wall_now()));
                std::fs::rename(path, &aside)
                    .map_err(|source| StoreError::Io { path: path.to_owned(), source })?;
                let (store, sessions) = Self::open_and_load(path)?;
                Ok(Opened { store, sessions, moved_aside: Some((aside, why.to_string())) })
            }
        }
    }

    fn open_and_load(path: &Path) -> Result<(Self, Vec<Loaded>), StoreError> {
        let db = Database::create(path).map_err(|e| db_error(path, e))?;
        let store = Self { db, path: path.to_owned() };
        let sessions = store.load()?;
        Ok((store, sessions))
    }

    fn load(&self) -> Result<Vec<Loaded>, StoreError> {
        let p = &self.path;
        // Make the tables exist, so an empty store reads as empty.
        let tx = self.db.begin_write().map_err(|e| db_error(p, e))?;
        tx.open_table(SESSIONS).map_err(|e| db_error(p, e))?;
        tx.open_table(MESSAGES).map_err(|e| db_error(p, e))?;
        tx.commit().map_err(|e| db_error(p, e))?;
        let tx = self.db.begin_read().map_err(|e| db_error(p, e))?;
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
        let tx = self.db.begin_write().map_err(|e| db_error(p, e))?;
        remove(&tx, client_id, p)?;
        tx.commit().map_err(|e| db_error(p, e))
    }

    /// Starts the writer thread. Each of the `workers` gets its completed
    /// tickets on its own channel, in order (a ticket stands for itself and
    /// all of that worker's before it).
    pub fn start_writer(
        self,
        metrics: Arc<Metrics>,
        workers: usize,
    ) -> (StoreWriter, Vec<mpsc::UnboundedReceiver<u64>>) {
        let (tx, rx) = std::sync::mpsc::channel::<Write>();
        let (done_tx, done_rx): (Vec<_>, Vec<_>) =
            (0..workers.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let spawned = std::thread::Builder::new().name("session-store".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                // The last ticket of each worker in this batch.
                let mut last = vec![0u64; done_tx.len()];
                for w in &batch {
                    if let Some(t) = last.get_mut(w.worker) {
                        *t = (*t).max(w.ticket);
                    }
                }
                let mut delay = Duration::from_millis(100);
                loop {
                    let started = Instant::now();
                    match self.commit(&batch) {
                        Ok(()) => {
                            let us = started.elapsed().as_micros();
                            Metrics::inc(&metrics.store_commits);
                            metrics.store_writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
                            metrics.store_commit_us.fetch_add(
                                u64::try_from(us).unwrap_or(u64::MAX),
                                Ordering::Relaxed,
                            );
                            break;
                        }
                        Err(e) => {
                            // Nothing waiting on this write goes out until
                            // it is on disk: retry.
                            Metrics::inc(&metrics.store_errors);
                            error!("{e}; retrying in {delay:?}");
                            std::thread::sleep(delay);
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
                crate::failpoint::hit("store-committed");
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
        (StoreWriter { tx }, done_rx)
    }

    fn commit(&self, batch: &[Write]) -> Result<(), StoreError> {
        let p = &self.path;
        let tx = self.db.begin_write().map_err(|e| db_error(p, e))?;
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
        store
            .commit(&[
                w(1, "a", persist(b"ra", &[(1, b"m1"), (2, b"m2")], &[])),
                w(2, "b", persist(b"rb", &[(1, b"x")], &[])),
                w(3, "a", persist(b"ra2", &[(3, b"m3")], &[1])),
            ])
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
}
