//! The monitoring listener: plain HTTP/1.1 on 127.0.0.1 by default, one
//! request per connection. It serves the Prometheus page (`/metrics`),
//! the status page (`/`) and the management API (`/api/v1/...`, see
//! [`api`] and docs/api.md). Small on purpose: a request line, a few
//! headers and a hand-written router, no HTTP framework.

pub mod api;
pub mod rates;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::control::Controls;
use crate::metrics::Metrics;
use crate::store::wall_now;
use rates::RateHistory;

/// The longest request head read.
const MAX_HEAD: usize = 8192;

/// The longest request body read (and ignored: no call takes one).
const MAX_BODY: usize = 65_536;

/// How long one connection may take, request and answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// What the monitoring listener serves from.
pub struct Monitor {
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// The workers, for the management API.
    pub controls: Arc<Controls>,
    /// The bearer token of the mutating calls; `None`: they are refused.
    pub api_token: Option<String>,
    /// The settings the status shows.
    pub info: GatewayInfo,
}

impl std::fmt::Debug for Monitor {
    // The token is a secret: whether one is set shows, not its value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("controls", &self.controls)
            .field("api_token", &self.api_token.as_ref().map(|_| "(set)"))
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The gateway's settings as the status shows them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GatewayInfo {
    /// Where sensors send (`gateway.listen`).
    pub listen: String,
    /// The broker, as its connector describes it.
    pub broker: String,
    /// The session store file; `None`: in memory only.
    pub store: Option<String>,
    /// The `[limits]` section.
    pub limits: crate::config::LimitsSection,
    /// `transparent` or `aggregating` (`gateway.mode`).
    pub mode: &'static str,
}

impl GatewayInfo {
    /// The settings of `cfg`, with the broker as `broker` describes it.
    pub fn from_config(cfg: &crate::config::Config, broker: String) -> Self {
        Self {
            listen: cfg.gateway.listen.clone(),
            broker,
            store: Some(cfg.gateway.store.clone()).filter(|s| !s.is_empty()),
            limits: cfg.limits.clone(),
            mode: match cfg.gateway.mode {
                crate::config::Mode::Transparent => "transparent",
                crate::config::Mode::Aggregating => "aggregating",
            },
        }
    }
}

/// What every connection shares.
struct Shared {
    monitor: Monitor,
    started: Instant,
    started_wall: u64,
    rates: Mutex<RateHistory>,
}

/// Serves `monitor` on `listener` until `shutdown` completes, and keeps
/// the message-rate history of `GET /api/v1/rates`.
pub async fn serve(listener: TcpListener, monitor: Monitor, shutdown: impl Future<Output = ()>) {
    let started_wall = wall_now();
    let shared = Arc::new(Shared {
        monitor,
        started: Instant::now(),
        started_wall,
        // The counters start at zero with the gateway: the first bucket
        // counts from there, however late this task first runs.
        rates: Mutex::new(RateHistory::starting(started_wall)),
    });
    let first = tokio::time::Instant::now() + rates::INTERVAL;
    let mut sample = tokio::time::interval_at(first, rates::INTERVAL);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let s = shared.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, &s)).await;
                    });
                }
            }
            _ = sample.tick() => {
                let totals = rates::totals(&shared.monitor.metrics);
                if let Ok(mut r) = shared.rates.lock() {
                    r.record(wall_now(), totals);
                }
            }
            () = &mut shutdown => return,
        }
    }
}

/// One HTTP request, as far as the router needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, still percent-encoded.
    pub path: String,
    /// The query parameters, decoded, in order.
    pub query: Vec<(String, String)>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Content-Length` header (0 without one).
    pub content_length: usize,
}

/// Why a request head could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No request line with a method, a target and a version.
    #[error("malformed request line")]
    RequestLine,
    /// A header that is not `Name: value`, or a bad `Content-Length`.
    #[error("malformed header")]
    Header,
    /// A path or query that does not decode to UTF-8.
    #[error("malformed percent-encoding")]
    Encoding,
}

impl Request {
    /// Reads a request head (everything before the blank line).
    pub fn parse(head: &[u8]) -> Result<Self, RequestError> {
        let head = std::str::from_utf8(head).map_err(|_| RequestError::RequestLine)?;
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(RequestError::RequestLine);
        };
        if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
            return Err(RequestError::RequestLine);
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut query_pairs = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            query_pairs.push((decode(k, true)?, decode(v, true)?));
        }
        let mut req = Request {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query_pairs,
            authorization: None,
            content_length: 0,
        };
        for line in lines.take_while(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').ok_or(RequestError::Header)?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("authorization") {
                req.authorization = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("content-length") {
                req.content_length = value.parse().map_err(|_| RequestError::Header)?;
            }
        }
        Ok(req)
    }

    /// The path's segments, percent-decoded (a `%2F` stays inside its
    /// segment).
    pub fn segments(&self) -> Result<Vec<String>, RequestError> {
        self.path.trim_start_matches('/').split('/').map(|s| decode(s, false)).collect()
    }
}

/// Percent-decodes `s` (and `+` as a space in a query).
pub fn decode(s: &str, query: bool) -> Result<String, RequestError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(RequestError::Encoding)?;
                let hex = std::str::from_utf8(hex).map_err(|_| RequestError::Encoding)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| RequestError::Encoding)?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| RequestError::Encoding)
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// Headers beside the usual ones.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: String,
}

impl Response {
    /// A 200 answer.
    pub fn ok(content_type: &'static str, body: String) -> Self {
        Self { status: 200, content_type, headers: Vec::new(), body }
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

async fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    // Read the request head (bounded), then any body (bounded, ignored),
    // then answer and close.
    let mut data = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let end = loop {
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(pos);
        }
        if data.len() > MAX_HEAD {
            break None;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(buf.get(..n).unwrap_or_default());
    };
    let response = match end {
        None => Response::text(431, "request head too large\n"),
        Some(end) => match Request::parse(data.get(..end).unwrap_or_default()) {
            Err(e) => Response::text(400, &format!("{e}\n")),
            Ok(req) if req.content_length > MAX_BODY => Response::text(413, "body too large\n"),
            Ok(req) => {
                let mut have = data.len().saturating_sub(end + 4);
                while have < req.content_length {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    have += n;
                }
                api::route(&req, shared).await
            }
        },
    };
    stream.write_all(&response.bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_gives_method_path_query_and_token() {
        let head =
            b"GET /api/v1/sessions?state=active&client_id=green%20house+1&limit=5 HTTP/1.1\r\n\
                     Host: x\r\nauthorization: Bearer abc\r\nContent-Length: 0";
        let r = Request::parse(head).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/v1/sessions");
        assert_eq!(
            r.query,
            [
                ("state".to_owned(), "active".to_owned()),
                ("client_id".to_owned(), "green house 1".to_owned()),
                ("limit".to_owned(), "5".to_owned())
            ]
        );
        assert_eq!(r.authorization.as_deref(), Some("Bearer abc"));
    }

    #[test]
    fn a_client_id_with_a_slash_stays_one_segment() {
        let r = Request::parse(b"POST /api/v1/sessions/a%2Fb+c/disconnect HTTP/1.1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.segments(),
            Ok(vec!["api", "v1", "sessions", "a/b+c", "disconnect"]
                .into_iter()
                .map(String::from)
                .collect())
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert_eq!(Request::parse(b"GET"), Err(RequestError::RequestLine));
        assert_eq!(Request::parse(b"GET x HTTP/1.1"), Err(RequestError::RequestLine));
        assert_eq!(Request::parse(b"GET / HTTP/1.1\r\nbad header"), Err(RequestError::Header));
        assert_eq!(
            Request::parse(b"GET / HTTP/1.1\r\nContent-Length: x"),
            Err(RequestError::Header)
        );
        assert_eq!(decode("%zz", false), Err(RequestError::Encoding));
        assert_eq!(decode("%ff", false), Err(RequestError::Encoding));
        assert_eq!(decode("a%", false), Err(RequestError::Encoding));
    }
}
