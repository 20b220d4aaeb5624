//! The management API's way into the workers: each worker takes
//! [`Control`] requests on a channel of its own and answers them from its
//! [`Endpoint`](crate::endpoint::Endpoint) between two datagrams;
//! [`Controls`] asks every worker and merges the answers (a session lives
//! on one worker, and the caller does not know which).

use std::sync::OnceLock;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::session::SessionState;

/// Requests one worker may have queued before the API answers "busy".
const QUEUE: usize = 16;

/// The most sessions one listing returns.
pub const MAX_LIMIT: usize = 100_000;

/// Which sessions a listing returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only sessions in one of these states; empty: any.
    pub states: Vec<SessionState>,
    /// Only ClientIds containing this (a prefix is a substring too).
    pub client_id: Option<String>,
    /// At most this many, the first by ClientId.
    pub limit: usize,
}

impl Default for SessionFilter {
    fn default() -> Self {
        Self { states: Vec::new(), client_id: None, limit: 1000 }
    }
}

impl SessionFilter {
    /// True when a session with this ClientId and state is listed.
    pub fn matches(&self, client_id: &str, state: SessionState) -> bool {
        (self.states.is_empty() || self.states.contains(&state))
            && self.client_id.as_deref().is_none_or(|part| client_id.contains(part))
    }
}

/// Where a session's broker connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamState {
    /// No connection (the session is over, or not connected yet).
    Closed,
    /// Connecting to the broker.
    Connecting,
    /// Connected.
    Up,
    /// The broker is unreachable; the connection is being retried.
    Down,
    /// Being closed.
    Closing,
}

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    /// The topic filter.
    pub filter: String,
    /// The QoS the broker granted (0, 1 or 2).
    pub qos: u8,
}

/// One topic registration of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    /// The topic id.
    pub topic_id: u16,
    /// The topic name.
    pub topic: String,
}

/// One session as the API shows it (see docs/api.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    /// The sensor's ClientId.
    pub client_id: String,
    /// Where the session is.
    pub state: SessionState,
    /// When it entered that state, in seconds since the Unix epoch.
    pub since: u64,
    /// When the sensor was last heard from, in seconds since the Unix
    /// epoch.
    pub last_heard: u64,
    /// The sensor's address (`IP:PORT`, with ` node HEX` behind a
    /// forwarder); none once the session is over.
    pub peer: Option<String>,
    /// The sensor asked for a clean session.
    pub clean_session: bool,
    /// The keepalive the sensor asked for, in seconds.
    pub keepalive_secs: u64,
    /// The sleep duration of a sleeping sensor, in seconds.
    pub sleep_secs: Option<u64>,
    /// Topic filters subscribed to.
    pub subscription_count: usize,
    /// Topics the sensor registered.
    pub registration_count: usize,
    /// Messages waiting to be sent to the sensor (the sleep buffer
    /// included).
    pub queued: usize,
    /// Messages sent to the sensor and not yet acknowledged by it.
    pub in_flight: usize,
    /// The sensor's requests waiting for the broker.
    pub pending_upstream: usize,
    /// Where its broker connection is.
    pub upstream: UpstreamState,
    /// The worker holding it.
    pub worker: usize,
    /// Every subscription (in the detail of one session only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<Vec<Subscription>>,
    /// Every registration, by topic id (in the detail of one session
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registrations: Option<Vec<Registration>>,
}

/// A listing: how many sessions matched, and the first `limit` of them by
/// ClientId.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionList {
    /// Sessions that matched the filter.
    pub total: usize,
    /// The first of them by ClientId.
    pub sessions: Vec<SessionInfo>,
}

/// One worker's view of the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerShare {
    /// The gateway's own connection is connected (worker 0 holds it).
    pub up: bool,
    /// The gateway's own connection found the broker unreachable.
    pub down: bool,
    /// Broker connections open on this worker (the gateway's own
    /// included).
    pub connections: usize,
    /// Sessions held by this worker.
    pub sessions: usize,
}

/// Why a request was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No worker holds a session with this ClientId.
    #[error("no session with this ClientId")]
    NotFound,
    /// The session is over already: nothing to disconnect.
    #[error("the session is not connected")]
    NotConnected,
    /// The sensor is connected: it must be disconnected before its
    /// session is deleted.
    #[error("the sensor is connected: disconnect it first")]
    Connected,
    /// The workers have not started yet.
    #[error("the gateway is starting")]
    Starting,
    /// A worker did not take or answer the request (busy or stopping).
    #[error("the workers are busy or stopping")]
    Unavailable,
}

/// A request to one worker, answered on `reply`.
#[derive(Debug)]
pub enum Control {
    /// The sessions matching a filter.
    Sessions {
        /// Which ones.
        filter: SessionFilter,
        /// The answer.
        reply: oneshot::Sender<SessionList>,
    },
    /// One session in detail.
    Session {
        /// Its ClientId.
        client_id: String,
        /// The answer: `None` when this worker does not hold it.
        reply: oneshot::Sender<Option<SessionInfo>>,
    },
    /// Disconnect a sensor (see [`crate::session::Session::disconnect`]).
    Disconnect {
        /// Its ClientId.
        client_id: String,
        /// Let the broker publish its will.
        with_will: bool,
        /// The answer.
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// Delete an ended session, from memory and from the store.
    Forget {
        /// Its ClientId.
        client_id: String,
        /// The answer.
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    /// What this worker knows of the broker.
    Broker {
        /// The answer.
        reply: oneshot::Sender<BrokerShare>,
    },
}

/// The API's handle on every worker's control channel. Made before the
/// workers (the monitoring listener may start first); the server fills it
/// in when it starts them ([`Controls::channels`]).
#[derive(Debug, Default)]
pub struct Controls {
    workers: OnceLock<Vec<mpsc::Sender<Control>>>,
}

impl Controls {
    /// A handle without workers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes one channel per worker and keeps their senders; the
    /// receivers are for the workers, in order. Called once: a second
    /// call gets channels nobody sends on.
    pub fn channels(&self, workers: usize) -> Vec<mpsc::Receiver<Control>> {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::channel(QUEUE)).unzip();
        let _ = self.workers.set(tx);
        rx
    }

    /// How many workers there are (0 before they start).
    pub fn workers(&self) -> usize {
        self.workers.get().map_or(0, Vec::len)
    }

    /// Sends one request to every worker and collects the answers.
    async fn ask<T>(
        &self,
        make: impl Fn(oneshot::Sender<T>) -> Control,
    ) -> Result<Vec<T>, ControlError> {
        let workers = self.workers.get().ok_or(ControlError::Starting)?;
        let mut waiting = Vec::with_capacity(workers.len());
        for w in workers {
            let (tx, rx) = oneshot::channel();
            w.try_send(make(tx)).map_err(|_| ControlError::Unavailable)?;
            waiting.push(rx);
        }
        let mut answers = Vec::with_capacity(waiting.len());
        for rx in waiting {
            answers.push(rx.await.map_err(|_| ControlError::Unavailable)?);
        }
        Ok(answers)
    }

    /// The sessions matching `filter`, the first `filter.limit` by
    /// ClientId.
    pub async fn sessions(&self, filter: SessionFilter) -> Result<SessionList, ControlError> {
        let limit = filter.limit;
        let shares = self.ask(|reply| Control::Sessions { filter: filter.clone(), reply }).await?;
        let mut all = SessionList::default();
        for share in shares {
            all.total += share.total;
            all.sessions.extend(share.sessions);
        }
        all.sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        all.sessions.truncate(limit);
        Ok(all)
    }

    /// The session of `client_id`, in detail.
    pub async fn session(&self, client_id: &str) -> Result<SessionInfo, ControlError> {
        let answers =
            self.ask(|reply| Control::Session { client_id: client_id.to_owned(), reply }).await?;
        answers.into_iter().flatten().next().ok_or(ControlError::NotFound)
    }

    /// Disconnects the sensor `client_id`.
    pub async fn disconnect(&self, client_id: &str, with_will: bool) -> Result<(), ControlError> {
        let answers = self
            .ask(|reply| Control::Disconnect { client_id: client_id.to_owned(), with_will, reply })
            .await?;
        merge(answers)
    }

    /// Deletes the ended session of `client_id`, from memory and from the
    /// store.
    pub async fn forget(&self, client_id: &str) -> Result<(), ControlError> {
        let answers =
            self.ask(|reply| Control::Forget { client_id: client_id.to_owned(), reply }).await?;
        merge(answers)
    }

    /// What the workers know of the broker, added up.
    pub async fn broker(&self) -> Result<BrokerShare, ControlError> {
        let shares = self.ask(|reply| Control::Broker { reply }).await?;
        Ok(shares.into_iter().fold(BrokerShare::default(), |a, s| BrokerShare {
            up: a.up || s.up,
            down: a.down || s.down,
            connections: a.connections + s.connections,
            sessions: a.sessions + s.sessions,
        }))
    }
}

/// One answer from the worker that holds the session: its success, or
/// its error; [`ControlError::NotFound`] when none holds it.
fn merge(answers: Vec<Result<(), ControlError>>) -> Result<(), ControlError> {
    let mut out = Err(ControlError::NotFound);
    for a in answers {
        match a {
            Ok(()) => return Ok(()),
            Err(ControlError::NotFound) => {}
            Err(e) => out = Err(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_takes_states_and_a_part_of_the_client_id() {
        let f = SessionFilter {
            states: vec![SessionState::Active, SessionState::Asleep],
            client_id: Some("house".into()),
            limit: 10,
        };
        assert!(f.matches("greenhouse-1", SessionState::Active));
        assert!(f.matches("house-2", SessionState::Asleep));
        assert!(!f.matches("greenhouse-1", SessionState::Ended));
        assert!(!f.matches("barn-1", SessionState::Active));
        assert!(SessionFilter::default().matches("x", SessionState::Lost));
    }

    #[test]
    fn the_answer_of_the_worker_holding_the_session_wins() {
        use ControlError::*;
        assert_eq!(merge(vec![Err(NotFound), Ok(())]), Ok(()));
        assert_eq!(merge(vec![Err(NotConnected), Err(NotFound)]), Err(NotConnected));
        assert_eq!(merge(vec![Err(NotFound), Err(NotFound)]), Err(NotFound));
    }

    #[tokio::test]
    async fn before_the_workers_start_the_answer_is_starting() {
        let c = Controls::new();
        assert_eq!(c.broker().await, Err(ControlError::Starting));
    }

    #[tokio::test]
    async fn listings_of_every_worker_are_merged_by_client_id() {
        let c = std::sync::Arc::new(Controls::new());
        let mut rx = c.channels(2);
        let info = |id: &str, worker| SessionInfo {
            client_id: id.into(),
            state: SessionState::Active,
            since: 0,
            last_heard: 0,
            peer: None,
            clean_session: true,
            keepalive_secs: 0,
            sleep_secs: None,
            subscription_count: 0,
            registration_count: 0,
            queued: 0,
            in_flight: 0,
            pending_upstream: 0,
            upstream: UpstreamState::Up,
            worker,
            subscriptions: None,
            registrations: None,
        };
        let mut workers = Vec::new();
        for (w, mut r) in rx.drain(..).enumerate() {
            let ids: Vec<&'static str> = if w == 0 { vec!["b", "d"] } else { vec!["a", "c"] };
            workers.push(tokio::spawn(async move {
                if let Some(Control::Sessions { filter, reply }) = r.recv().await {
                    let sessions: Vec<_> =
                        ids.iter().take(filter.limit).map(|id| info(id, w)).collect();
                    let _ = reply.send(SessionList { total: ids.len(), sessions });
                }
            }));
        }
        let list = c.sessions(SessionFilter { limit: 3, ..SessionFilter::default() }).await;
        let list = list.unwrap_or_default();
        assert_eq!(list.total, 4);
        let ids: Vec<&str> = list.sessions.iter().map(|s| s.client_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        for w in workers {
            let _ = w.await;
        }
    }
}
