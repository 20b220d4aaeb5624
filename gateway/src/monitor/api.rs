//! The router of the monitoring listener: the status page, the
//! Prometheus page and the management API (JSON; docs/api.md has the
//! schema). Reading calls are open to whoever reaches the listener;
//! calls that change something need `Authorization: Bearer <token>` with
//! the configured `monitoring.api_token`, and are refused without one.

use serde_json::{json, Value};

use super::{rates, Request, Response, Shared};
use crate::control::{ControlError, SessionFilter, MAX_LIMIT};
use crate::session::SessionState;
use crate::store::wall_now;

/// The status page: one self-contained HTML file (no external script,
/// style or font).
const STATUS_PAGE: &str = include_str!("status.html");

const JSON: &str = "application/json";

/// Answers one request.
pub(super) async fn route(req: &Request, s: &Shared) -> Response {
    let segments = match req.segments() {
        Ok(v) => v,
        Err(e) => return error(400, "bad_request", &e.to_string()),
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        [""] => match allow(req, "GET") {
            Ok(()) => Response::ok("text/html; charset=utf-8", STATUS_PAGE.to_owned()),
            Err(r) => r,
        },
        ["metrics"] => match allow(req, "GET") {
            Ok(()) => Response::ok(
                "text/plain; version=0.0.4; charset=utf-8",
                s.monitor.metrics.prometheus(),
            ),
            Err(r) => r,
        },
        ["api", "v1", rest @ ..] => api(req, rest, s).await.unwrap_or_else(|r| r),
        _ => Response::text(404, "not found\n"),
    }
}

async fn api(req: &Request, rest: &[&str], s: &Shared) -> Result<Response, Response> {
    let m = &s.monitor;
    match rest {
        ["status"] => {
            allow(req, "GET")?;
            no_params(req)?;
            Ok(json_ok(&status(s).await))
        }
        ["broker"] => {
            allow(req, "GET")?;
            no_params(req)?;
            Ok(json_ok(&broker(s).await))
        }
        ["rates"] => {
            allow(req, "GET")?;
            no_params(req)?;
            let totals = rates::totals(&m.metrics);
            let view = match s.rates.lock() {
                Ok(r) => r.view(wall_now(), totals),
                Err(_) => rates::Rates::default(),
            };
            Ok(json_ok(&view))
        }
        ["sessions"] => {
            allow(req, "GET")?;
            let filter = session_filter(req)?;
            let list = m.controls.sessions(filter).await.map_err(control_error)?;
            Ok(json_ok(&list))
        }
        ["sessions", id] => {
            allow(req, "GET")?;
            no_params(req)?;
            let info = m.controls.session(id).await.map_err(|e| session_error(e, id))?;
            Ok(json_ok(&info))
        }
        ["sessions", id, "disconnect"] => {
            allow(req, "POST")?;
            authorize(req, m.api_token.as_deref())?;
            let mut with_will = false;
            for (k, v) in &req.query {
                match k.as_str() {
                    "will" => with_will = flag(k, v)?,
                    _ => return Err(unknown_param(k)),
                }
            }
            m.controls.disconnect(id, with_will).await.map_err(|e| session_error(e, id))?;
            Ok(json_ok(&json!({ "client_id": id, "disconnected": true, "will": with_will })))
        }
        ["sessions", id, "stored"] => {
            allow(req, "DELETE")?;
            authorize(req, m.api_token.as_deref())?;
            no_params(req)?;
            m.controls.forget(id).await.map_err(|e| session_error(e, id))?;
            Ok(json_ok(&json!({ "client_id": id, "deleted": true })))
        }
        _ => Err(error(404, "not_found", "no such API path")),
    }
}

/// The gateway, the broker, the sessions, the store and the limits.
async fn status(s: &Shared) -> Value {
    let m = &s.monitor;
    let snap = m.metrics.snapshot();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let sessions = m.controls.broker().await.ok().map(|b| b.sessions);
    json!({
        "gateway": {
            "version": env!("CARGO_PKG_VERSION"),
            "started": s.started_wall,
            "uptime_secs": s.started.elapsed().as_secs(),
            "listen": m.info.listen,
            "mode": m.info.mode,
            "workers": m.controls.workers(),
            "api": if m.api_token.is_some() { "read-write" } else { "read-only" },
        },
        "broker": broker(s).await,
        "sessions": {
            "total": sessions,
            "connected": snap.sessions_active.saturating_sub(snap.sessions_asleep),
            "asleep": snap.sessions_asleep,
            "lost_total": snap.sensors_lost,
            "buffered_messages": snap.buffered_messages,
            "buffered_bytes": get(&m.metrics.buffered_bytes),
        },
        "counters": {
            "datagrams_in": snap.datagrams_in,
            "datagrams_out": snap.datagrams_out,
            "malformed": snap.malformed,
            "unknown_sender": snap.unknown_sender,
            "connects_refused": snap.connects_refused,
            "admission_refused": snap.admission_refused,
            "replies_suppressed": snap.replies_suppressed,
            "acl_refused": snap.acl_refused,
            "takeovers": snap.takeovers,
            "dropped": snap.dropped,
            "retransmissions": snap.retransmissions,
            "upstream_outages": get(&m.metrics.upstream_outages),
        },
        "store": {
            "path": m.info.store,
            "commits": get(&m.metrics.store_commits),
            "writes": get(&m.metrics.store_writes),
            "errors": get(&m.metrics.store_errors),
            "failing": get(&m.metrics.store_failing) == 1,
            "reopens": get(&m.metrics.store_reopens),
            "writes_waiting": get(&m.metrics.store_waiting),
        },
        "limits": m.info.limits,
    })
}

/// The broker: where, whether the gateway's own connection is up, and
/// how many connections the gateway holds to it.
async fn broker(s: &Shared) -> Value {
    let m = &s.monitor;
    match m.controls.broker().await {
        Ok(b) => json!({
            "url": m.info.broker,
            "state": if b.up { "up" } else if b.down { "down" } else { "connecting" },
            "connections": b.connections,
        }),
        Err(e) => json!({ "url": m.info.broker, "state": "unknown", "reason": e.to_string() }),
    }
}

/// The filter of `GET /api/v1/sessions`.
fn session_filter(req: &Request) -> Result<SessionFilter, Response> {
    let mut f = SessionFilter::default();
    for (k, v) in &req.query {
        match k.as_str() {
            "state" => {
                for name in v.split(',').filter(|n| !n.is_empty()) {
                    let state = SessionState::parse(name).ok_or_else(|| {
                        let all: Vec<&str> = SessionState::ALL.iter().map(|s| s.as_str()).collect();
                        bad_param(k, &format!("{name:?} is not one of {}", all.join(", ")))
                    })?;
                    f.states.push(state);
                }
            }
            "client_id" => f.client_id = Some(v.clone()).filter(|v| !v.is_empty()),
            "limit" => {
                f.limit =
                    v.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
                        bad_param(k, &format!("not a number from 1 to {MAX_LIMIT}"))
                    })?;
            }
            _ => return Err(unknown_param(k)),
        }
    }
    Ok(f)
}

/// `true`/`1` or `false`/`0`.
fn flag(name: &str, v: &str) -> Result<bool, Response> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad_param(name, "not true or false")),
    }
}

fn no_params(req: &Request) -> Result<(), Response> {
    match req.query.first() {
        Some((k, _)) => Err(unknown_param(k)),
        None => Ok(()),
    }
}

fn unknown_param(name: &str) -> Response {
    error(400, "bad_parameter", &format!("unknown parameter {name:?}"))
}

fn bad_param(name: &str, why: &str) -> Response {
    error(400, "bad_parameter", &format!("parameter {name:?}: {why}"))
}

/// 405 unless the method is `method`.
fn allow(req: &Request, method: &'static str) -> Result<(), Response> {
    if req.method == method {
        return Ok(());
    }
    let mut r = error(405, "method_not_allowed", &format!("use {method}"));
    r.headers.push(("Allow", method.to_owned()));
    Err(r)
}

/// A mutating call: refused without a configured token (403), or
/// without the right one (401).
fn authorize(req: &Request, token: Option<&str>) -> Result<(), Response> {
    let Some(token) = token else {
        return Err(error(
            403,
            "read_only",
            "this gateway's API is read-only: set monitoring.api_token to allow changes",
        ));
    };
    let sent = req.authorization.as_deref().and_then(|h| {
        let (scheme, value) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
    });
    let (message, challenge) = match sent {
        Some(t) if same(t.as_bytes(), token.as_bytes()) => return Ok(()),
        Some(_) => ("wrong token", "Bearer error=\"invalid_token\""),
        None => ("send Authorization: Bearer <monitoring.api_token>", "Bearer"),
    };
    let mut r = error(401, "unauthorized", message);
    r.headers.push(("WWW-Authenticate", challenge.to_owned()));
    Err(r)
}

/// Compares two tokens in a time that does not depend on where they
/// differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    let diff = (0..a.len().max(b.len()))
        .fold(0u8, |d, i| d | (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(1)));
    diff == 0 && a.len() == b.len()
}

fn session_error(e: ControlError, id: &str) -> Response {
    match e {
        ControlError::NotFound => {
            error(404, "not_found", &format!("no session with ClientId {id:?}"))
        }
        e => control_error(e),
    }
}

fn control_error(e: ControlError) -> Response {
    let (status, code) = match e {
        ControlError::NotFound => (404, "not_found"),
        ControlError::NotConnected => (409, "not_connected"),
        ControlError::Connected => (409, "connected"),
        ControlError::Starting => (503, "starting"),
        ControlError::Unavailable => (503, "unavailable"),
    };
    error(status, code, &e.to_string())
}

fn json_ok(v: &impl serde::Serialize) -> Response {
    match serde_json::to_string(v) {
        Ok(body) => Response::ok(JSON, body),
        Err(e) => error(500, "internal", &e.to_string()),
    }
}

/// A JSON error: `{"error": code, "message": text}`.
fn error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({ "error": code, "message": message }).to_string();
    Response { status, content_type: JSON, headers: Vec::new(), body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, auth: Option<&str>) -> Request {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: x");
        if let Some(a) = auth {
            head.push_str(&format!("\r\nAuthorization: {a}"));
        }
        Request::parse(head.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn mutating_calls_need_the_configured_token() {
        let token = Some("0123456789abcdef");
        let r = req("POST", "/x", None);
        assert_eq!(authorize(&r, None).err().map(|r| r.status), Some(403));
        assert_eq!(authorize(&r, token).err().map(|r| r.status), Some(401));
        let wrong = req("POST", "/x", Some("Bearer 0123456789abcdeX"));
        assert_eq!(authorize(&wrong, token).err().map(|r| r.status), Some(401));
        let short = req("POST", "/x", Some("Bearer 0123"));
        assert_eq!(authorize(&short, token).err().map(|r| r.status), Some(401));
        let basic = req("POST", "/x", Some("Basic 0123456789abcdef"));
        assert_eq!(authorize(&basic, token).err().map(|r| r.status), Some(401));
        let right = req("POST", "/x", Some("bearer 0123456789abcdef"));
        assert!(authorize(&right, token).is_ok());
    }

    #[test]
    fn the_session_filter_names_a_bad_parameter() {
        let f = session_filter(&req("GET", "/s?state=active,asleep&client_id=gh&limit=7", None));
        let f = f.unwrap_or_else(|r| panic!("{}", r.body));
        assert_eq!(f.states, [SessionState::Active, SessionState::Asleep]);
        assert_eq!((f.client_id.as_deref(), f.limit), (Some("gh"), 7));
        for bad in ["state=awake", "limit=0", "limit=x", "colour=red"] {
            let r = session_filter(&req("GET", &format!("/s?{bad}"), None));
            let r = r.err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(r.status, 400, "{bad}");
            let key = bad.split('=').next().unwrap_or_default();
            assert!(r.body.contains(key), "{bad}: {}", r.body);
        }
    }

    #[test]
    fn control_errors_have_their_status_codes() {
        assert_eq!(session_error(ControlError::NotFound, "s1").status, 404);
        assert!(session_error(ControlError::NotFound, "s1").body.contains("s1"));
        assert_eq!(control_error(ControlError::Connected).status, 409);
        assert_eq!(control_error(ControlError::Starting).status, 503);
        assert_eq!(allow(&req("GET", "/", None), "POST").err().map(|r| r.status), Some(405));
    }

    #[test]
    fn the_status_page_is_self_contained() {
        assert!(STATUS_PAGE.contains("<script>"));
        // The SVG namespace is a name, not something fetched.
        let page = STATUS_PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for external in ["http://", "https://", "src=", "<link", "@import", "url(", "//cdn"] {
            assert!(!page.contains(external), "{external}");
        }
    }
}
