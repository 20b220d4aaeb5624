//! The gateway's top: binds nothing itself, opens the store, restores its
//! sessions, starts one worker per socket of the [`Listener`] and closes
//! them gracefully when `shutdown` completes.
//!
//! Each worker ([`crate::worker`]) is a thread with its own
//! single-threaded runtime, endpoint, upstream connections and socket; the
//! workers share only the [`Directory`] (which worker holds which
//! session), the store's writer thread and the counters.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::control::Controls;
use crate::endpoint::{Directory, Endpoint, WallClock};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::session::{Session, SessionConfig};
use crate::store::{wall_now, Store};
use crate::udp::Listener;
use crate::upstream::aggregating::{Aggregating, PoolOptions};
use crate::upstream::connection::{Connector, UpstreamOptions};
use crate::upstream::mode::ByMode;
use crate::upstream::transparent::Transparent;
use crate::worker::Worker;

pub use crate::options::ServerOptions;
pub use crate::upstream::UpstreamKey;

/// Hand-overs one worker may have queued for another before more are
/// dropped (counted).
const INBOX: usize = 4096;

/// How the gateway reaches the broker.
#[derive(Clone)]
pub struct UpstreamSetup {
    /// Opens transports (TCP or TLS).
    pub connector: Arc<dyn Connector>,
    /// Timers, backoff and limits of the connections.
    pub opts: UpstreamOptions,
}

/// Runs the gateway on `listener` until `shutdown` completes, then closes
/// every session gracefully: sensors get DISCONNECT, upstream sessions end
/// with DISCONNECT (no will fires). The workers take the management API's
/// requests from `controls`.
pub async fn run(
    listener: Listener,
    upstream: UpstreamSetup,
    cfg: Arc<SessionConfig>,
    opts: ServerOptions,
    metrics: Arc<Metrics>,
    controls: Arc<Controls>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut opts = opts;
    let mut listener = listener;
    // The pool's connections are shared: a session takes responsibility
    // for a message as soon as it has queued it (docs/aggregating.md).
    if opts.aggregating.is_some() {
        metrics.mode_aggregating.store(1, std::sync::atomic::Ordering::Relaxed);
    }
    let cfg = match &opts.aggregating {
        Some(_) if !cfg.ack_on_receipt => {
            Arc::new(SessionConfig { ack_on_receipt: true, ..(*cfg).clone() })
        }
        _ => cfg,
    };
    let mut dtls = match listener.take_dtls() {
        Some((socket, settings)) => {
            let assoc = crate::dtls::Associations::new(settings, metrics.clone(), Instant::now())
                .map_err(std::io::Error::other)?;
            Some((socket, assoc))
        }
        None => None,
    };
    let workers = listener.workers();
    let sockets = listener.into_sockets();
    let mut group = match (opts.multicast, sockets.first()) {
        (Some(m), Some(first)) => match m.group.prepare_sender(first).and_then(|()| m.group.join())
        {
            Ok(socket) => {
                info!(
                    group = %m.group.addr,
                    "discovery on the multicast group: SEARCHGW answered, ADVERTISE every {} s",
                    m.advertise_every.as_secs()
                );
                Some(socket)
            }
            Err(e) => {
                warn!(
                    "cannot use the discovery group {} ({e}): no SEARCHGW from it, no \
                     ADVERTISE to it (discovery.multicast_group, discovery.multicast_interface)",
                    m.group.addr
                );
                opts.multicast = None;
                None
            }
        },
        _ => None,
    };
    let opts = Arc::new(opts);
    let dir = Arc::new(Directory::new(workers));
    let (writer, mut store_done, restored) = match &opts.store_path {
        None => (None, Vec::new(), Vec::new()),
        Some(path) => {
            let opened = Store::open(path).map_err(std::io::Error::other)?;
            if let Some((aside, why)) = &opened.moved_aside {
                error!(
                    "the session store {} could not be read ({why}); it was moved to {} and a \
                     new one started: sessions from before are not restored",
                    path.display(),
                    aside.display()
                );
            }
            let restored = restore_sessions(&opened, &cfg, path);
            let shared = dir.clone();
            let (writer, done) = opened
                .store
                .start_writer(metrics.clone(), workers, move |f| shared.set_store_failing(f));
            (Some(writer), done, restored)
        }
    };
    if !restored.is_empty() {
        info!(sessions = restored.len(), "sessions restored from the store");
    }
    let mut shares: Vec<Vec<Restored>> = (0..workers).map(|_| Vec::new()).collect();
    for r in restored {
        let w = dir.home_of(r.0.client_id());
        if let Some(share) = shares.get_mut(w) {
            share.push(r);
        }
    }
    let (inbox_tx, inboxes): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::channel(INBOX)).unzip();
    let (serial_tx, lines) = open_serial_lines(&opts, inbox_tx.first(), &metrics)?;
    let mut control_rx = controls.channels(workers).into_iter();
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let now = Instant::now();
    let clock = WallClock::new(now, wall_now());
    let broker = upstream.connector.describe();
    let mut done = Vec::new();
    let mut completions: Vec<Option<mpsc::UnboundedReceiver<u64>>> =
        store_done.drain(..).map(Some).collect();
    completions.resize_with(workers, || None);
    for (id, ((socket, inbox), share)) in sockets.into_iter().zip(inboxes).zip(shares).enumerate() {
        if id == 0 && opts.advertise.is_some() {
            socket.set_broadcast(true)?;
        }
        let mut endpoint = Endpoint::new(
            cfg.clone(),
            opts.clone(),
            metrics.clone(),
            dir.clone(),
            id,
            writer.is_some(),
            now,
            clock,
        );
        for (session, addr, ended_at) in share {
            endpoint.restore(session, addr, ended_at, now);
        }
        let seed = wall_now() ^ ((id as u64 + 1) << 32);
        let store = match (&writer, completions.get_mut(id).and_then(Option::take)) {
            (Some(w), Some(rx)) => Some((w.clone(), rx)),
            _ => None,
        };
        let worker = Worker {
            id,
            socket,
            group: if id == 0 { group.take() } else { None },
            dtls: if id == 0 { dtls.take() } else { None },
            endpoint,
            upstreams: {
                let inner = Transparent::new(upstream.opts, broker.clone(), seed);
                match &opts.aggregating {
                    Some(pool) => {
                        let pool = PoolOptions {
                            worker: id,
                            own_client_id: opts.own_client_id.clone(),
                            ..pool.clone()
                        };
                        ByMode::Aggregating(
                            Aggregating::new(pool, inner).with_metrics(metrics.clone()),
                        )
                    }
                    None => ByMode::Transparent(inner),
                }
            },
            connector: upstream.connector.clone(),
            close_timeout: upstream.opts.close_timeout,
            inbox,
            peers: inbox_tx.clone(),
            control: control_rx.next(),
            store,
            shutdown: stop_rx.clone(),
            shutdown_grace: opts.shutdown_grace,
            metrics: metrics.clone(),
            serial: serial_tx.clone(),
        };
        let (tx, rx) = oneshot::channel::<std::io::Result<()>>();
        let d = dispatch.clone();
        std::thread::Builder::new().name(format!("mqttsn-worker-{id}")).spawn(move || {
            let _guard = tracing::dispatcher::set_default(&d);
            let result = worker.run();
            if let Err(e) = &result {
                error!(worker = id, "worker stopped: {e}");
            }
            let _ = tx.send(result);
        })?;
        done.push(rx);
    }
    drop(writer);
    drop(inbox_tx);
    drop(serial_tx);
    let lines: Vec<_> = lines.into_iter().map(|l| tokio::spawn(l.run())).collect();
    tokio::pin!(shutdown);
    let mut first_exit = None;
    tokio::select! {
        () = &mut shutdown => {}
        r = futures_util::future::select_all(done.iter_mut()) => {
            first_exit = Some(r.1);
        }
    }
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    for (i, rx) in done.into_iter().enumerate() {
        if first_exit == Some(i) {
            continue;
        }
        if let Ok(Err(e)) = rx.await {
            result = Err(e);
        }
    }
    if first_exit.is_some() && result.is_ok() {
        result = Err(std::io::Error::other("a worker stopped"));
    }
    // The workers are gone, so are the lines' channels: they end once they
    // have written what the workers left them (the DISCONNECTs).
    for line in lines {
        let _ = line.await;
    }
    result
}

/// Opens every serial line; returns each line's channel (for the workers)
/// and the lines to run. A device that cannot be opened stops the start,
/// naming it.
fn open_serial_lines(
    opts: &ServerOptions,
    worker0: Option<&mpsc::Sender<crate::endpoint::Forward>>,
    metrics: &Arc<Metrics>,
) -> std::io::Result<(Vec<mpsc::Sender<bytes::Bytes>>, Vec<crate::serial::line::Line>)> {
    let mut senders = Vec::new();
    let mut lines = Vec::new();
    let Some(worker0) = worker0 else { return Ok((senders, lines)) };
    for (i, settings) in opts.serial.iter().enumerate() {
        let index = u16::try_from(i).map_err(|_| std::io::Error::other("too many serial lines"))?;
        let fd = crate::serial::tty::open(&settings.device, settings.baud).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("serial[{i}].device: cannot open {}: {e}", settings.device.display()),
            )
        })?;
        info!(
            line = index,
            device = %settings.device.display(),
            baud = settings.baud,
            framing = %settings.framing,
            "serial sensor network"
        );
        let (tx, rx) = mpsc::channel(crate::serial::line::QUEUE);
        senders.push(tx);
        lines.push(crate::serial::line::Line {
            index,
            settings: settings.clone(),
            fd,
            to_worker: worker0.clone(),
            from_workers: rx,
            metrics: metrics.clone(),
        });
    }
    Ok((senders, lines))
}

/// A restored session, its address, and when it ended (if it had).
pub type Restored = (Session, Option<Peer>, Option<Instant>);

/// One stored session as the gateway takes it back at start-up: the
/// session, its address, and when it ended (`now` and `wall` are the same
/// moment on the monotonic and the wall clock).
pub fn restore_session(
    cfg: &Arc<SessionConfig>,
    loaded: &crate::store::Loaded,
    now: Instant,
    wall: u64,
) -> Result<Restored, crate::session::PersistError> {
    let messages = loaded.messages.iter().cloned();
    let (session, addr) =
        Session::restore(cfg.clone(), &loaded.client_id, &loaded.record, messages, now)?;
    let ended_at = session.ended_wall().map(|w| {
        let ago = Duration::from_secs(wall.saturating_sub(w));
        now.checked_sub(ago).unwrap_or(now)
    });
    Ok((session, Peer::from_bytes(&addr), ended_at))
}

/// The sessions of an opened store, as sessions. One that cannot be read
/// is reported; the store file is copied aside first (never silently
/// lost) and the record removed.
fn restore_sessions(
    opened: &crate::store::Opened,
    cfg: &Arc<SessionConfig>,
    path: &std::path::Path,
) -> Vec<Restored> {
    let now = Instant::now();
    let wall = wall_now();
    let mut out = Vec::new();
    let mut copied = false;
    for loaded in &opened.sessions {
        match restore_session(cfg, loaded, now, wall) {
            Ok(restored) => out.push(restored),
            Err(e) => {
                if !copied {
                    let aside = format!("{}.corrupt-{}", path.display(), wall);
                    match std::fs::copy(path, &aside) {
                        Ok(_) => error!(
                            "the session store has unreadable sessions; a copy is kept at {aside}"
                        ),
                        Err(e) => error!("cannot copy the session store to {aside}: {e}"),
                    }
                    copied = true;
                }
                error!(client_id = %loaded.client_id, "stored session cannot be read ({e}); it is not restored");
                if let Err(e) = opened.store.remove_now(&loaded.client_id) {
                    error!("{e}");
                }
            }
        }
    }
    out
}
