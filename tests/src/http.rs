//! A plain HTTP/1.1 client for the gateway's monitoring listener: one
//! request per connection, bounded by a timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The header lines, as received.
    pub head: String,
    /// The body.
    pub body: String,
}

impl Reply {
    /// The body as JSON (fails the test if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `method path` (with `Authorization: Bearer token` when given)
/// and reads the whole answer.
pub fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect to the monitoring listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: gateway\r\n{auth}Content-Length: 0\r\n\r\n")
        .expect("send request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read answer");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw}"));
    Reply { status, head: head.to_owned(), body: body.to_owned() }
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> Reply {
    call(addr, "GET", path, None)
}
