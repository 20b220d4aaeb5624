//! The IO of the upstream transports, for one worker thread: opens what an
//! [`Upstreams`] asks for, reads what the broker sends, writes what the
//! upstream hands out, closes.
//!
//! Every transport of a worker is driven from the worker's one loop: no
//! task and no channel per connection. Readiness comes from one
//! [`FuturesUnordered`] of small futures (a connect, "readable",
//! "writable", a bounded wait for the broker's close), so a loop iteration
//! costs as much as the transports that are ready, not as many as there
//! are. Bytes read are decoded straight from one buffer shared by all the
//! worker's transports; only an incomplete packet is copied aside. A
//! transport's pending writes are one buffer, filled only when the kernel
//! does not take everything at once. TLS records are made and read by the
//! rustls session here, after the connector did the handshake.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;

use super::connection::{Connector, Transport};
use super::{ConnId, Io, Upstreams};

/// Octets read from one transport before others get their turn.
const READ_BUDGET: usize = 64 * 1024;

/// What became ready.
#[derive(Debug)]
pub enum Ready {
    /// An open finished.
    Opened(ConnId, Result<Box<Transport>, String>),
    /// A transport may have octets to read.
    Readable(ConnId),
    /// A transport may take octets.
    Writable(ConnId),
    /// The broker closed its side after our half-close, or the wait ended.
    Lingered(ConnId),
    /// A future that was no longer wanted.
    Aborted,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transport({:?}, tls: {})", self.tcp.peer_addr().ok(), self.tls.is_some())
    }
}

type Pending = Pin<Box<dyn Future<Output = Ready>>>;

struct Open {
    tcp: Rc<TcpStream>,
    tls: Option<Box<rustls::ClientConnection>>,
    /// Octets the kernel has not taken yet (TLS records, for TLS).
    wbuf: BytesMut,
    /// The pending "readable" future.
    reading: Option<AbortHandle>,
    /// A "writable" future is pending.
    writing: bool,
    /// An incomplete packet.
    partial: BytesMut,
    /// Close with linger once `wbuf` is written.
    closing: bool,
}

enum Conn {
    Opening(AbortHandle),
    Open(Box<Open>),
    Lingering(AbortHandle),
}

/// The transports of one worker. See the module documentation.
pub struct Driver {
    connector: Arc<dyn Connector>,
    close_timeout: Duration,
    conns: std::collections::HashMap<ConnId, Conn>,
    pending: FuturesUnordered<Pending>,
    /// The read buffer shared by every transport.
    rbuf: BytesMut,
    /// TLS records read, before decryption.
    raw: Vec<u8>,
}

/// `io::Write` over a non-blocking TCP stream (for rustls).
struct TryWriter<'a>(&'a TcpStream);

impl Write for TryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Driver {
    /// A driver opening transports with `connector`; a lingering close
    /// waits at most `close_timeout` for the broker.
    pub fn new(connector: Arc<dyn Connector>, close_timeout: Duration) -> Self {
        Self {
            connector,
            close_timeout,
            conns: std::collections::HashMap::new(),
            pending: FuturesUnordered::new(),
            rbuf: BytesMut::new(),
            raw: Vec::new(),
        }
    }

    /// Transports open or being opened.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True with no transport at all.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The next readiness; pending for ever when nothing is waited on.
    pub async fn ready(&mut self) -> Ready {
        if self.pending.is_empty() {
            return std::future::pending().await;
        }
        self.pending.next().await.unwrap_or(Ready::Aborted)
    }

    fn push(&mut self, f: impl Future<Output = Ready> + 'static) -> AbortHandle {
        let (handle, reg) = AbortHandle::new_pair();
        let f = Abortable::new(f, reg);
        self.pending.push(Box::pin(async move { f.await.unwrap_or(Ready::Aborted) }));
        handle
    }

    /// Carries out a transport request.
    pub fn apply<U: Upstreams>(&mut self, io: Io, up: &mut U, now: Instant) {
        match io {
            Io::Open { conn, cert } => {
                let connector = self.connector.clone();
                let handle = self.push(async move {
                    let result =
                        connector.connect(cert.as_ref()).await.map(Box::new).map_err(|e| {
                            format!("cannot connect to {}: {e}", connector.describe())
                        });
                    Ready::Opened(conn, result)
                });
                self.conns.insert(conn, Conn::Opening(handle));
            }
            Io::Close { conn, linger: false } => self.drop_conn(conn),
            Io::Close { conn, linger: true } => {
                let Some(Conn::Open(open)) = self.conns.get_mut(&conn) else {
                    // Nothing open: closed already.
                    self.drop_conn(conn);
                    up.handle_closed(conn, "closed", now);
                    return;
                };
                open.closing = true;
                if open.wbuf.is_empty() {
                    self.linger(conn);
                }
            }
        }
    }

    fn drop_conn(&mut self, conn: ConnId) {
        match self.conns.remove(&conn) {
            Some(Conn::Opening(h)) | Some(Conn::Lingering(h)) => h.abort(),
            Some(Conn::Open(open)) => {
                if let Some(h) = open.reading {
                    h.abort();
                }
            }
            None => {}
        }
    }

    /// Half-closes and waits (bounded) for the broker to close its side,
    /// so that it has processed our DISCONNECT before a new connection
    /// with the same ClientId arrives.
    fn linger(&mut self, conn: ConnId) {
        let Some(Conn::Open(mut open)) = self.conns.remove(&conn) else { return };
        if let Some(h) = open.reading.take() {
            h.abort();
        }
        if let Some(tls) = open.tls.as_mut() {
            tls.send_close_notify();
            while tls.wants_write() {
                if tls.write_tls(&mut TryWriter(&open.tcp)).is_err() {
                    break;
                }
            }
        }
        let _ = rustix::net::shutdown(&*open.tcp, rustix::net::Shutdown::Write);
        let tcp = open.tcp.clone();
        let timeout = self.close_timeout;
        let handle = self.push(async move {
            let _ = tokio::time::timeout(timeout, async {
                let mut sink = [0u8; 512];
                loop {
                    if tcp.readable().await.is_err() {
                        break;
                    }
                    match tcp.try_read(&mut sink) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
            Ready::Lingered(conn)
        });
        self.conns.insert(conn, Conn::Lingering(handle));
    }

    fn arm_read(&mut self, conn: ConnId) {
        let Some(Conn::Open(open)) = self.conns.get(&conn) else { return };
        if open.reading.is_some() {
            return;
        }
        let tcp = open.tcp.clone();
        let handle = self.push(async move {
            let _ = tcp.readable().await;
            Ready::Readable(conn)
        });
        if let Some(Conn::Open(open)) = self.conns.get_mut(&conn) {
            open.reading = Some(handle);
        }
    }

    fn arm_write(&mut self, conn: ConnId) {
        let Some(Conn::Open(open)) = self.conns.get_mut(&conn) else { return };
        if open.writing {
            return;
        }
        open.writing = true;
        let tcp = open.tcp.clone();
        self.push(async move {
            let _ = tcp.writable().await;
            Ready::Writable(conn)
        });
    }

    /// Handles what became ready.
    pub fn handle<U: Upstreams>(&mut self, ready: Ready, up: &mut U, now: Instant) {
        match ready {
            Ready::Aborted => {}
            Ready::Opened(conn, result) => {
                if !matches!(self.conns.get(&conn), Some(Conn::Opening(_))) {
                    return;
                }
                match result {
                    Ok(t) => {
                        let t = *t;
                        let open = Open {
                            tcp: Rc::new(t.tcp),
                            tls: t.tls.map(Box::new),
                            wbuf: BytesMut::new(),
                            reading: None,
                            writing: false,
                            partial: BytesMut::new(),
                            closing: false,
                        };
                        let buffered = open.tls.is_some();
                        self.conns.insert(conn, Conn::Open(Box::new(open)));
                        up.handle_opened(conn, now);
                        if buffered {
                            // The handshake may have brought records along.
                            self.read(conn, up, now, false);
                        }
                        self.arm_read(conn);
                    }
                    Err(reason) => {
                        self.conns.remove(&conn);
                        up.handle_open_failed(conn, &reason, now);
                    }
                }
            }
            Ready::Readable(conn) => {
                if let Some(Conn::Open(open)) = self.conns.get_mut(&conn) {
                    open.reading = None;
                    self.read(conn, up, now, true);
                    self.arm_read(conn);
                }
            }
            Ready::Writable(conn) => {
                if let Some(Conn::Open(open)) = self.conns.get_mut(&conn) {
                    open.writing = false;
                    self.flush(conn, up, now);
                }
            }
            Ready::Lingered(conn) => {
                if matches!(self.conns.get(&conn), Some(Conn::Lingering(_))) {
                    self.conns.remove(&conn);
                    up.handle_closed(conn, "closed by the gateway", now);
                }
            }
        }
    }

    /// Reads what `conn` has (up to the budget) and hands it to `up`.
    fn read<U: Upstreams>(&mut self, conn: ConnId, up: &mut U, now: Instant, from_socket: bool) {
        let mut total = 0;
        loop {
            let Some(Conn::Open(open)) = self.conns.get_mut(&conn) else { return };
            let result = match open.tls.as_mut() {
                None => {
                    let buf =
                        if open.partial.is_empty() { &mut self.rbuf } else { &mut open.partial };
                    buf.reserve(16 * 1024);
                    open.tcp.try_read_buf(buf)
                }
                Some(tls) => read_tls(&open.tcp, tls, &mut self.raw, from_socket || total > 0)
                    .and_then(|()| {
                        let buf = if open.partial.is_empty() {
                            &mut self.rbuf
                        } else {
                            &mut open.partial
                        };
                        plaintext(tls, buf)
                    }),
            };
            match result {
                Ok(0) if open.tls.is_none() => {
                    return self.fail(conn, "connection closed by the broker", up, now);
                }
                Ok(0) => {
                    // TLS: no plaintext yet (or none at all without
                    // reading the socket).
                    if !from_socket {
                        return;
                    }
                }
                Ok(n) => {
                    total += n;
                    let use_shared = open.partial.is_empty();
                    if use_shared {
                        up.handle_received(conn, &mut self.rbuf, now);
                        if !self.rbuf.is_empty() {
                            // An incomplete packet waits for the rest.
                            if let Some(Conn::Open(open)) = self.conns.get_mut(&conn) {
                                open.partial.extend_from_slice(&self.rbuf);
                            }
                            self.rbuf.clear();
                        }
                    } else {
                        let mut partial = std::mem::take(&mut open.partial);
                        up.handle_received(conn, &mut partial, now);
                        if let Some(Conn::Open(open)) = self.conns.get_mut(&conn) {
                            open.partial = partial;
                        }
                    }
                    if let Some(Conn::Open(open)) = self.conns.get_mut(&conn) {
                        if open.tls.as_ref().is_some_and(|t| t.wants_write()) {
                            self.flush(conn, up, now);
                        }
                    }
                    if total >= READ_BUDGET || !from_socket {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return self.fail(conn, "connection closed by the broker", up, now);
                }
                Err(e) => return self.fail(conn, &format!("read from broker: {e}"), up, now),
            }
        }
    }

    /// The transport failed: it is dropped and `up` told.
    fn fail<U: Upstreams>(&mut self, conn: ConnId, reason: &str, up: &mut U, now: Instant) {
        self.drop_conn(conn);
        up.handle_closed(conn, reason, now);
    }

    /// Writes `bytes` to `conn` (or keeps them until it takes them).
    pub fn write<U: Upstreams>(&mut self, conn: ConnId, bytes: BytesMut, up: &mut U, now: Instant) {
        let Some(Conn::Open(open)) = self.conns.get_mut(&conn) else { return };
        if let Some(tls) = open.tls.as_mut() {
            if tls.writer().write_all(&bytes).is_err() {
                return self.fail(conn, "write to broker: TLS session closed", up, now);
            }
            return self.flush(conn, up, now);
        }
        if !open.wbuf.is_empty() {
            open.wbuf.extend_from_slice(&bytes);
            return;
        }
        match open.tcp.try_write(&bytes) {
            Ok(n) if n == bytes.len() => {}
            Ok(n) => {
                let mut rest = bytes;
                rest.advance(n);
                open.wbuf = rest;
                self.arm_write(conn);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                open.wbuf = bytes;
                self.arm_write(conn);
            }
            Err(e) => self.fail(conn, &format!("write to broker: {e}"), up, now),
        }
    }

    /// Writes what waits (TLS records and pending octets); a close that
    /// waited for them goes ahead.
    fn flush<U: Upstreams>(&mut self, conn: ConnId, up: &mut U, now: Instant) {
        let Some(Conn::Open(open)) = self.conns.get_mut(&conn) else { return };
        let mut blocked = false;
        if let Some(tls) = open.tls.as_mut() {
            while tls.wants_write() {
                match tls.write_tls(&mut TryWriter(&open.tcp)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) => return self.fail(conn, &format!("write to broker: {e}"), up, now),
                }
            }
        }
        while !open.wbuf.is_empty() {
            match open.tcp.try_write(&open.wbuf) {
                Ok(n) => open.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) => return self.fail(conn, &format!("write to broker: {e}"), up, now),
            }
        }
        if blocked {
            self.arm_write(conn);
        } else if open.closing {
            self.linger(conn);
        }
    }
}

/// Reads TLS records from the socket (when `from_socket`) and decrypts
/// them.
fn read_tls(
    tcp: &TcpStream,
    tls: &mut rustls::ClientConnection,
    raw: &mut Vec<u8>,
    from_socket: bool,
) -> io::Result<()> {
    if from_socket {
        raw.resize(16 * 1024, 0);
        let n = tcp.try_read(raw)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut rd = raw.get(..n).unwrap_or_default();
        while !rd.is_empty() {
            if tls.read_tls(&mut rd)? == 0 {
                break;
            }
            tls.process_new_packets().map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        }
    }
    Ok(())
}

/// Moves the decrypted octets into `buf`; returns how many.
fn plaintext(tls: &mut rustls::ClientConnection, buf: &mut BytesMut) -> io::Result<usize> {
    let mut total = 0;
    let mut chunk = [0u8; 4096];
    loop {
        match tls.reader().read(&mut chunk) {
            Ok(0) => {
                if total == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                return Ok(total);
            }
            Ok(n) => {
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}
