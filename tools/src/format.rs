//! `mqttsn sub -F FORMAT`: mosquitto_sub's output format codes, applied to
//! a received message.
//!
//! Supported, as in mosquitto_sub 2.0: `%%`, `%t` topic, `%p` payload, `%q`
//! QoS, `%r` retain flag, `%l` payload length, `%x` / `%X` payload in hex,
//! `%I` ISO 8601 local time, `%U` Unix time with nanoseconds, `%j` / `%J`
//! JSON (escaped / raw payload); the flags `-` (align left), `0` (pad with
//! zeros), a field width and a `.precision` on `%t`, `%p`, `%x`, `%X`,
//! `%l`, `%I`; `@` followed by a strftime letter (`@Y`, `@H`, `@N` for
//! nanoseconds, `@@` for `@`); the escapes `\\`, `\0`, `\a`, `\e`, `\n`,
//! `\r`, `\t`, `\v`. The MQTT v5 property codes (`%A %C %D %E %F %P %R
//! %S`) print as mosquitto prints them for an MQTT 3.1.1 message: blank.
//! `%m`, the MQTT message id, has no counterpart the tool could show (the
//! MsgId is the gateway's, per hop): it prints 0, as mosquitto does at QoS
//! 0, and `%j` has no `mid` field.

use std::io::Write;

use mqttsn_client::std_udp::Message;
use mqttsn_client::QoS;

/// The time a message was printed at.
#[derive(Debug, Clone)]
pub struct Stamp {
    zoned: jiff::ZonedDateTime,
}

impl Stamp {
    /// Now, in the system's time zone (UTC when it has none).
    pub fn now() -> Self {
        Self { zoned: jiff::ZonedDateTime::now() }
    }

    /// A given instant in a given zone (for tests).
    pub fn at(zoned: jiff::ZonedDateTime) -> Self {
        Self { zoned }
    }

    fn strftime(&self, spec: &str) -> String {
        let mut out = String::new();
        // An unknown conversion prints nothing, as with C's strftime.
        let _ = jiff::fmt::strtime::format(spec, &self.zoned).map(|s| out.push_str(&s));
        out
    }

    fn nanos(&self) -> i32 {
        self.zoned.timestamp().subsec_nanosecond()
    }
}

/// The QoS digit as MQTT shows it (QoS -1 never reaches a subscriber).
fn qos_digit(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce | QoS::NoSession => b'0',
        QoS::AtLeastOnce => b'1',
        QoS::ExactlyOnce => b'2',
    }
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
}

fn pad(out: &mut Vec<u8>, n: usize, c: u8) {
    out.extend(std::iter::repeat_n(c, n));
}

fn put_str(out: &mut Vec<u8>, s: &[u8], spec: Spec) {
    let s = match spec.precision {
        Some(p) if p < s.len() => &s[..p],
        _ => s,
    };
    let fill = spec.width.saturating_sub(s.len());
    if !spec.left {
        pad(out, fill, b' ');
    }
    out.extend_from_slice(s);
    if spec.left {
        pad(out, fill, b' ');
    }
}

fn put_int(out: &mut Vec<u8>, v: usize, spec: Spec) {
    let s = v.to_string();
    let fill = spec.width.saturating_sub(s.len());
    if spec.left {
        out.extend_from_slice(s.as_bytes());
        pad(out, fill, b' ');
    } else {
        pad(out, fill, if spec.zero { b'0' } else { b' ' });
        out.extend_from_slice(s.as_bytes());
    }
}

/// As mosquitto's `write_payload`: a field width truncates the payload to
/// that many octets (half as many in hex) and pads what is left.
fn put_payload(out: &mut Vec<u8>, payload: &[u8], hex: Option<bool>, spec: Spec) {
    let mut len = payload.len();
    let padlen;
    if spec.width > 0 {
        len = len.min(spec.width);
        if hex.is_some() {
            len /= 2;
            padlen = spec.width.saturating_sub(len * 2);
        } else {
            padlen = spec.width.saturating_sub(len);
        }
    } else {
        padlen = 0;
    }
    let c = if spec.zero { b'0' } else { b' ' };
    if !spec.left {
        pad(out, padlen, c);
    }
    let body = &payload[..len];
    match hex {
        None => out.extend_from_slice(body),
        Some(upper) => {
            for b in body {
                let _ = if upper { write!(out, "{b:02X}") } else { write!(out, "{b:02x}") };
            }
        }
    }
    if spec.left {
        pad(out, padlen, b' ');
    }
}

/// A JSON string body, escaped as cJSON escapes it (mosquitto's JSON).
fn json_escape(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 => {
                let _ = write!(out, "\\u{c:04x}");
            }
            c => out.push(c),
        }
    }
}

fn json(out: &mut Vec<u8>, m: &Message, stamp: &Stamp, escaped: bool) {
    // mosquitto's "tst": local time with microseconds, a literal Z, then
    // the zone offset.
    let tst = format!(
        "{}.{:06}Z{}",
        stamp.strftime("%Y-%m-%dT%H:%M:%S"),
        stamp.nanos() / 1000,
        stamp.strftime("%z")
    );
    out.extend_from_slice(b"{\"tst\":\"");
    out.extend_from_slice(tst.as_bytes());
    out.extend_from_slice(b"\",\"topic\":\"");
    json_escape(out, m.topic.as_bytes());
    let _ = write!(
        out,
        "\",\"qos\":{},\"retain\":{},\"payloadlen\":{},\"payload\":",
        char::from(qos_digit(m.qos)),
        u8::from(m.retain),
        m.payload.len()
    );
    if m.payload.is_empty() {
        out.extend_from_slice(b"null");
    } else if escaped {
        out.push(b'"');
        json_escape(out, &m.payload);
        out.push(b'"');
    } else {
        out.extend_from_slice(&m.payload);
    }
    out.push(b'}');
}

fn percent(out: &mut Vec<u8>, code: u8, m: &Message, stamp: &Stamp, spec: Spec) {
    match code {
        b'%' => out.push(b'%'),
        b't' => put_str(out, m.topic.as_bytes(), spec),
        b'p' => put_payload(out, &m.payload, None, spec),
        b'x' => put_payload(out, &m.payload, Some(false), spec),
        b'X' => put_payload(out, &m.payload, Some(true), spec),
        b'l' => put_int(out, m.payload.len(), spec),
        b'q' => out.push(qos_digit(m.qos)),
        b'r' => out.push(if m.retain { b'1' } else { b'0' }),
        b'I' => put_str(out, stamp.strftime("%Y-%m-%dT%H:%M:%S%z").as_bytes(), spec),
        b'U' => {
            let _ = write!(out, "{}.{:09}", stamp.zoned.timestamp().as_second(), stamp.nanos());
        }
        b'j' => json(out, m, stamp, true),
        b'J' => {
            // As mosquitto_sub: a payload that is not JSON prints nothing
            // here, and a line on standard error.
            if m.payload.is_empty()
                || serde_json::from_slice::<serde_json::Value>(&m.payload).is_ok()
            {
                json(out, m, stamp, false);
            } else {
                eprintln!("Error: Message payload is not valid JSON on topic {}.", m.topic);
            }
        }
        // No MsgId of the broker's to show: 0, what mosquitto shows at QoS 0.
        b'm' => put_int(out, 0, spec),
        // MQTT v5 properties an MQTT 3.1.1 message never has: blank.
        b'A' | b'E' | b'F' | b'S' => pad(out, spec.width, if spec.zero { b'0' } else { b' ' }),
        b'C' => pad(out, spec.width, b' '),
        // %D, %P, %R print nothing without the property; %m: see above.
        _ => {}
    }
}

/// `m` printed with `format`; a newline follows unless `eol` is false
/// (`-N`).
pub fn render(format: &str, m: &Message, stamp: &Stamp, eol: bool) -> Vec<u8> {
    let f = format.as_bytes();
    let mut out = Vec::with_capacity(f.len() + m.payload.len());
    let mut i = 0;
    while i < f.len() {
        let c = f[i];
        let next = f.get(i + 1).copied();
        match (c, next) {
            (b'%', Some(_)) => {
                i += 1;
                let mut spec = Spec { left: false, zero: false, width: 0, precision: None };
                if f.get(i) == Some(&b'-') && i + 1 < f.len() {
                    spec.left = true;
                    i += 1;
                }
                if f.get(i) == Some(&b'0') && i + 1 < f.len() {
                    spec.zero = true;
                    i += 1;
                }
                while i + 1 < f.len() && f[i].is_ascii_digit() {
                    spec.width =
                        spec.width.saturating_mul(10).saturating_add(usize::from(f[i] - b'0'));
                    i += 1;
                }
                if f.get(i) == Some(&b'.') && i + 1 < f.len() {
                    i += 1;
                    let mut p = 0usize;
                    while i + 1 < f.len() && f[i].is_ascii_digit() {
                        p = p.saturating_mul(10).saturating_add(usize::from(f[i] - b'0'));
                        i += 1;
                    }
                    spec.precision = Some(p);
                }
                if let Some(&code) = f.get(i) {
                    percent(&mut out, code, m, stamp, spec);
                }
            }
            (b'@', Some(n)) => {
                i += 1;
                match n {
                    b'@' => out.push(b'@'),
                    b'N' => {
                        let _ = write!(out, "{:09}", stamp.nanos());
                    }
                    _ => {
                        let spec = format!("%{}", char::from(n));
                        out.extend_from_slice(stamp.strftime(&spec).as_bytes());
                    }
                }
            }
            (b'\\', Some(n)) => {
                i += 1;
                match n {
                    b'\\' => out.push(b'\\'),
                    b'0' => out.push(0),
                    b'a' => out.push(0x07),
                    b'e' => out.push(0x1b),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(0x0b),
                    _ => {}
                }
            }
            // A lone '%', '@' or '\' at the end prints nothing (mosquitto).
            (b'%' | b'@' | b'\\', None) => {}
            _ => out.push(c),
        }
        i += 1;
    }
    if eol {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Message {
        Message { topic: topic.into(), payload: payload.to_vec(), qos, retain }
    }

    fn stamp() -> Stamp {
        let ts =
            jiff::Timestamp::new(1_470_818_943, 786_368_637).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        Stamp::at(ts.to_zoned_datetime(jiff::tz::TimeZone::fixed(jiff::tz::offset(1))))
    }

    fn r(f: &str, m: &Message) -> String {
        String::from_utf8_lossy(&render(f, m, &stamp(), false)).into_owned()
    }

    #[test]
    fn codes_as_mosquitto_prints_them() {
        let m = msg("a/b", b"hello", QoS::AtLeastOnce, true);
        assert_eq!(r("%t %p %q %r %l", &m), "a/b hello 1 1 5");
        assert_eq!(r("%x|%X", &msg("t", &[0xab, 0x01], QoS::AtMostOnce, false)), "ab01|AB01");
        assert_eq!(r("[%5t][%-5t][%.1t][%05l][%-3l]", &m), "[  a/b][a/b  ][a][00005][5  ]");
        assert_eq!(r("[%3p]", &m), "[hel]");
        assert_eq!(r("%I", &m), "2016-08-10T09:49:03+0100");
        assert_eq!(r("%U", &m), "1470818943.786368637");
        assert_eq!(r("@Y-@m-@d @H:@M:@S.@N @@", &m), "2016-08-10 09:49:03.786368637 @");
        assert_eq!(r("a\\tb\\n%%\\\\", &m), "a\tb\n%\\");
        assert_eq!(r("[%A][%3E][%m]", &m), "[][   ][0]");
    }

    #[test]
    fn json_as_mosquitto_prints_it() {
        let m = msg("a/\"b", b"x\"\n", QoS::AtMostOnce, false);
        assert_eq!(
            r("%j", &m),
            "{\"tst\":\"2016-08-10T09:49:03.786368Z+0100\",\"topic\":\"a/\\\"b\",\"qos\":0,\
             \"retain\":0,\"payloadlen\":3,\"payload\":\"x\\\"\\n\"}"
        );
        let m = msg("t", b"{\"v\":1}", QoS::AtMostOnce, true);
        assert!(r("%J", &m).ends_with(",\"retain\":1,\"payloadlen\":7,\"payload\":{\"v\":1}}"));
        assert_eq!(r("[%J]", &msg("t", b"not json", QoS::AtMostOnce, false)), "[]");
        assert!(r("%j", &msg("t", b"", QoS::AtMostOnce, false)).ends_with("\"payload\":null}"));
    }

    #[test]
    fn a_newline_unless_told_otherwise() {
        let m = msg("t", b"p", QoS::AtMostOnce, false);
        assert_eq!(render("%p", &m, &stamp(), true), b"p\n");
        assert_eq!(render("%p", &m, &stamp(), false), b"p");
        assert_eq!(render("trailing %", &m, &stamp(), false), b"trailing ");
    }
}
