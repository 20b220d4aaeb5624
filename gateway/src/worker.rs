//! One worker: a thread with its own single-threaded tokio runtime that
//! runs an [`Endpoint`] (its share of the sessions), an [`Upstreams`] (their
//! broker connections) and the [`Driver`] of those connections, around one
//! UDP socket.
//!
//! The loop only moves things: it drains the socket in batches, hands each
//! datagram to the endpoint, passes the endpoint's commands straight to the
//! upstreams and their events straight back (same thread, no channel),
//! writes each connection's octets once per batch, sends the replies, and
//! keeps one timer, re-armed only when the earliest deadline moves
//! earlier. What goes to a serial line's address goes to that line's
//! driver ([`crate::serial`]) instead of the socket.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::control::Control;
use crate::endpoint::{Endpoint, Forward, WorkerId};
use crate::metrics::Metrics;
use crate::store::StoreWriter;
use crate::upstream::driver::Driver;
use crate::upstream::Upstreams;

/// Datagrams taken from the socket before the outputs go out.
const BATCH: usize = 1024;

/// The largest datagram accepted.
const MAX_DATAGRAM: usize = 65_536;

/// Datagrams are received into chunks of this size, shared by the payloads
/// sliced from them.
const CHUNK: usize = 256 * 1024;

/// Everything one worker runs with.
pub struct Worker<U> {
    /// Which worker this is.
    pub id: WorkerId,
    /// Its socket (non-blocking).
    pub socket: std::net::UdpSocket,
    /// The discovery group's socket (worker 0's, when there is a group).
    pub group: Option<std::net::UdpSocket>,
    /// The DTLS listener's socket and associations (worker 0's, when
    /// there is one). The other workers hand it what they send to DTLS
    /// peers ([`Forward::Seal`]).
    pub dtls: Option<(std::net::UdpSocket, crate::dtls::Associations)>,
    /// Its sessions.
    pub endpoint: Endpoint,
    /// Their upstream side.
    pub upstreams: U,
    /// Opens the upstream side's transports.
    pub connector: std::sync::Arc<dyn crate::upstream::connection::Connector>,
    /// How long a closing transport waits for the broker.
    pub close_timeout: Duration,
    /// Hand-overs from other workers.
    pub inbox: mpsc::Receiver<Forward>,
    /// To every worker (by id), this one included.
    pub peers: Vec<mpsc::Sender<Forward>>,
    /// Requests of the management API.
    pub control: Option<mpsc::Receiver<Control>>,
    /// The store's writer and this worker's completions.
    pub store: Option<(StoreWriter, mpsc::UnboundedReceiver<u64>)>,
    /// Set to true to close gracefully.
    pub shutdown: watch::Receiver<bool>,
    /// How long a graceful close waits for upstreams.
    pub shutdown_grace: Duration,
    /// Counters.
    pub metrics: std::sync::Arc<Metrics>,
    /// To each serial line (by index): what is sent to its address.
    pub serial: Vec<mpsc::Sender<bytes::Bytes>>,
}

/// The running worker: what the loop moves things between.
struct State<U> {
    id: WorkerId,
    endpoint: Endpoint,
    upstreams: U,
    driver: Driver,
    inbox: mpsc::Receiver<Forward>,
    peers: Vec<mpsc::Sender<Forward>>,
    control: Option<mpsc::Receiver<Control>>,
    writer: Option<StoreWriter>,
    metrics: std::sync::Arc<Metrics>,
    /// The socket is IPv6 (dual-stack): IPv4 peers are sent to mapped.
    ipv6: bool,
    /// The DTLS associations (worker 0), and whether its socket is IPv6.
    dtls: Option<(crate::dtls::Associations, bool)>,
    /// The serial lines' channels.
    serial: Vec<mpsc::Sender<bytes::Bytes>>,
}

/// A worker's sockets.
struct Sockets {
    udp: UdpSocket,
    group: Option<UdpSocket>,
    dtls: Option<UdpSocket>,
}

/// A datagram the kernel did not take at once.
struct Unsent {
    to: SocketAddr,
    data: Vec<u8>,
}

impl<U: Upstreams> Worker<U> {
    /// Runs the worker on the current thread until it has closed.
    pub fn run(self) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(self.run_loop())
    }

    async fn run_loop(self) -> std::io::Result<()> {
        let Worker {
            id,
            socket,
            group,
            dtls,
            endpoint,
            upstreams,
            connector,
            close_timeout,
            inbox,
            peers,
            control,
            store,
            mut shutdown,
            shutdown_grace,
            metrics,
            serial,
        } = self;
        let socket = UdpSocket::from_std(socket)?;
        let group = group.map(UdpSocket::from_std).transpose()?;
        let ipv6 = socket.local_addr()?.is_ipv6();
        let (dtls_socket, dtls) = match dtls {
            Some((s, assoc)) => {
                let v6 = s.local_addr()?.is_ipv6();
                (Some(UdpSocket::from_std(s)?), Some((assoc, v6)))
            }
            None => (None, None),
        };
        let driver = Driver::new(connector, close_timeout);
        let (writer, mut store_done) = match store {
            Some((w, rx)) => (Some(w), Some(rx)),
            None => (None, None),
        };
        let mut me = State {
            id,
            endpoint,
            upstreams,
            driver,
            inbox,
            peers,
            control,
            writer,
            metrics,
            ipv6,
            dtls,
            serial,
        };
        let sockets = Sockets { udp: socket, group, dtls: dtls_socket };
        me.run(sockets, &mut shutdown, shutdown_grace, &mut store_done).await
    }
}

impl<U: Upstreams> State<U> {
    async fn run(
        &mut self,
        sockets: Sockets,
        shutdown: &mut watch::Receiver<bool>,
        shutdown_grace: Duration,
        store_done: &mut Option<mpsc::UnboundedReceiver<u64>>,
    ) -> std::io::Result<()> {
        let mut rx = BytesMut::with_capacity(CHUNK);
        let mut tx = vec![0u8; MAX_DATAGRAM];
        let mut unsent: VecDeque<Unsent> = VecDeque::new();
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let mut timer: Pin<Box<tokio::time::Sleep>> = Box::pin(tokio::time::sleep_until(far));
        let mut armed: Option<Instant> = None;
        let mut closing: Option<Instant> = None;
        let Sockets { udp: socket, group, dtls: dtls_socket } = sockets;
        let socket = &socket;
        let dtls_socket = dtls_socket.as_ref();
        self.pump(Instant::now(), socket, dtls_socket, &mut tx, &mut unsent);
        loop {
            if let Some(deadline) = closing {
                if self.endpoint.upstreams_open() == 0 && self.upstreams.open_count() == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    let left = self.upstreams.open_count();
                    warn!(worker = self.id, left, "upstream sessions still open at shutdown");
                    break;
                }
            }
            let dtls_due = self.dtls.as_mut().and_then(|(d, _)| d.poll_timeout());
            let next =
                [self.endpoint.poll_timeout(), self.upstreams.poll_timeout(), closing, dtls_due]
                    .into_iter()
                    .flatten()
                    .min();
            if let Some(t) = next {
                if armed.is_none_or(|a| t < a) {
                    armed = Some(t);
                    timer.as_mut().reset(tokio::time::Instant::from_std(t));
                }
            }
            tokio::select! {
                r = socket.readable() => {
                    if r.is_ok() {
                        let now = Instant::now();
                        self.receive(now, socket, &mut rx);
                    }
                }
                r = async {
                    match dtls_socket {
                        Some(s) => s.readable().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let (Ok(()), Some(s)) = (r, dtls_socket) {
                        self.receive_dtls(Instant::now(), s);
                    }
                }
                r = async {
                    match &group {
                        Some(g) => g.readable().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let (Ok(()), Some(g)) = (r, &group) {
                        self.receive_group(Instant::now(), g);
                    }
                }
                ready = self.driver.ready() => {
                    let now = Instant::now();
                    self.driver.handle(ready, &mut self.upstreams, now);
                }
                Some(f) = self.inbox.recv() => {
                    let now = Instant::now();
                    self.forwarded(now, f);
                    for _ in 0..BATCH {
                        match self.inbox.try_recv() {
                            Ok(f) => self.forwarded(now, f),
                            Err(_) => break,
                        }
                    }
                }
                c = async {
                    match self.control.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match c {
                        Some(c) => self.endpoint.handle_control(Instant::now(), c),
                        // Nobody asks any more.
                        None => self.control = None,
                    }
                }
                Some(t) = async {
                    match store_done.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = Instant::now();
                    self.endpoint.handle_committed(now, t);
                }
                () = &mut timer => {
                    armed = None;
                    timer.as_mut().reset(far);
                    let now = Instant::now();
                    self.endpoint.handle_timeout(now);
                    self.upstreams.handle_timeout(now);
                    if let Some((d, _)) = self.dtls.as_mut() {
                        d.handle_timeout(now);
                    }
                }
                r = socket.writable(), if !unsent.is_empty() => {
                    if r.is_ok() {
                        resend(socket, &mut unsent);
                    }
                }
                r = shutdown.changed(), if closing.is_none() => {
                    if r.is_err() || *shutdown.borrow() {
                        let now = Instant::now();
                        self.endpoint.shutdown(now);
                        closing = Some(now + shutdown_grace);
                    }
                }
            }
            self.pump(Instant::now(), socket, dtls_socket, &mut tx, &mut unsent);
        }
        self.endpoint.flush_metrics();
        Ok(())
    }

    /// Takes up to [`BATCH`] datagrams from the socket.
    fn receive(&mut self, now: Instant, socket: &UdpSocket, rx: &mut BytesMut) {
        for _ in 0..BATCH {
            if rx.capacity() < MAX_DATAGRAM {
                *rx = BytesMut::with_capacity(CHUNK);
            }
            match socket.try_recv_buf_from(rx) {
                Ok((_, from)) => {
                    let datagram = rx.split().freeze();
                    self.endpoint.handle_datagram(now, crate::udp::canonical(from), &datagram);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP port unreachable and the like surface here on some
                // systems; they concern one peer, not the gateway.
                Err(e) => {
                    debug!("recv_from: {e}");
                    break;
                }
            }
        }
    }

    /// A hand-over from another worker: a datagram for a session held
    /// here, or one to encrypt for a DTLS peer (worker 0).
    fn forwarded(&mut self, now: Instant, f: Forward) {
        match f {
            Forward::Seal { to, data } => match self.dtls.as_mut() {
                Some((d, _)) => {
                    d.send(now, to, &data);
                }
                // No DTLS listener (a session restored from a run that
                // had one).
                None => Metrics::inc(&self.metrics.dtls_unsendable),
            },
            f => self.endpoint.handle_forward(now, f),
        }
    }

    /// Takes what waits on the DTLS socket: the associations decrypt, the
    /// endpoint gets the MQTT-SN datagrams.
    fn receive_dtls(&mut self, now: Instant, socket: &UdpSocket) {
        let Some((d, _)) = self.dtls.as_mut() else { return };
        let mut buf = [0u8; 2048];
        for _ in 0..BATCH {
            match socket.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    // The endpoint counts the MQTT-SN datagrams in them.
                    let Some(data) = buf.get(..n) else { continue };
                    d.handle_datagram(now, crate::udp::canonical(from), data);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!("recv_from on the DTLS socket: {e}");
                    break;
                }
            }
        }
        while d.poll_connected().is_some() {}
        while let Some((from, frame)) = d.poll_plaintext() {
            self.endpoint.handle_dtls_datagram(now, from, &frame);
        }
    }

    /// Takes what waits on the discovery group's socket (little: SEARCHGW).
    fn receive_group(&mut self, now: Instant, group: &UdpSocket) {
        let mut buf = [0u8; 1500];
        for _ in 0..64 {
            match group.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    let Some(data) = buf.get(..n) else { continue };
                    let data = bytes::Bytes::copy_from_slice(data);
                    self.endpoint.handle_group_datagram(now, crate::udp::canonical(from), &data);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    debug!("recv_from on the group: {e}");
                    break;
                }
            }
        }
    }

    /// Moves every output where it goes, until nothing moves.
    fn pump(
        &mut self,
        now: Instant,
        socket: &UdpSocket,
        dtls_socket: Option<&UdpSocket>,
        tx: &mut [u8],
        unsent: &mut VecDeque<Unsent>,
    ) {
        loop {
            let mut busy = false;
            while let Some((key, cmd)) = self.endpoint.poll_upstream() {
                self.upstreams.handle_command(key, cmd, now);
                busy = true;
            }
            while let Some((key, ev)) = self.upstreams.poll_event() {
                self.endpoint.handle_upstream(now, key, ev);
                busy = true;
            }
            while let Some((conn, bytes)) = self.upstreams.poll_transmit() {
                self.driver.write(conn, bytes, &mut self.upstreams, now);
                busy = true;
            }
            while let Some(io) = self.upstreams.poll_io() {
                self.driver.apply(io, &mut self.upstreams, now);
                busy = true;
            }
            while let Some((w, f)) = self.endpoint.poll_forward() {
                match self.peers.get(w) {
                    Some(p) => {
                        if p.try_send(f).is_err() {
                            Metrics::inc(&self.metrics.forwards_dropped);
                        }
                    }
                    None => Metrics::inc(&self.metrics.forwards_dropped),
                }
            }
            if let Some(writer) = &self.writer {
                while let Some(w) = self.endpoint.poll_store() {
                    writer.submit(w);
                    busy = true;
                }
            }
            if !busy {
                break;
            }
        }
        while let Some(t) = self.endpoint.poll_transmit(tx) {
            let Some(data) = tx.get(..t.len) else { continue };
            if t.link == crate::peer::Link::Dtls {
                match self.dtls.as_mut() {
                    Some((d, _)) => {
                        d.send(now, t.to, data);
                    }
                    None if self.id == 0 => Metrics::inc(&self.metrics.dtls_unsendable),
                    None => {
                        let f =
                            Forward::Seal { to: t.to, data: bytes::Bytes::copy_from_slice(data) };
                        if self.peers.first().is_none_or(|p| p.try_send(f).is_err()) {
                            Metrics::inc(&self.metrics.forwards_dropped);
                        }
                    }
                }
                continue;
            }
            if let Some(line) = crate::serial::line_of(&t.to) {
                let sent = self
                    .serial
                    .get(usize::from(line))
                    .map(|tx| tx.try_send(bytes::Bytes::copy_from_slice(data)));
                if !matches!(sent, Some(Ok(()))) {
                    debug!(line, "serial line busy or gone: datagram dropped");
                }
                continue;
            }
            let to = crate::udp::for_socket(t.to, self.ipv6);
            if !unsent.is_empty() {
                unsent.push_back(Unsent { to, data: data.to_vec() });
                continue;
            }
            match socket.try_send_to(data, to) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    unsent.push_back(Unsent { to, data: data.to_vec() });
                }
                Err(e) => debug!(to = %t.to, "send_to: {e}"),
            }
        }
        if let (Some((d, v6)), Some(s)) = (self.dtls.as_mut(), dtls_socket) {
            while let Some((to, data)) = d.poll_transmit() {
                // DTLS records that do not go out now are the engine's to
                // send again (handshake flights) or lost like any datagram.
                if let Err(e) = s.try_send_to(&data, crate::udp::for_socket(to, *v6)) {
                    debug!(%to, "send_to on the DTLS socket: {e}");
                }
            }
        }
        self.endpoint.flush_metrics();
    }
}

/// Sends what waited for the socket.
fn resend(socket: &UdpSocket, unsent: &mut VecDeque<Unsent>) {
    while let Some(u) = unsent.front() {
        match socket.try_send_to(&u.data, u.to) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => debug!(to = %u.to, "send_to: {e}"),
        }
        unsent.pop_front();
    }
}
