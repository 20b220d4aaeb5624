//! The driver of one serial line: reads frames, hands their messages to
//! worker 0 as datagrams from the line's address, and writes what the
//! workers send to that address, framed for the line.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqttsn_codec::serial::{self, Direction, Family, Radio};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::SerialLine;
use crate::endpoint::Forward;
use crate::metrics::Metrics;

/// The longest frame a line reads (an MQTT-SN message and its framing).
const MAX_FRAME: usize = 65_536 + 32;

/// A partial frame is forgotten after the line was silent this long.
const GAP: Duration = Duration::from_millis(100);

/// How long a line that failed waits before it is opened again.
const REOPEN: Duration = Duration::from_secs(1);

/// Messages the workers may have queued for one line.
pub const QUEUE: usize = 1024;

/// The largest Wireless Node Id a line puts in front of a message: a
/// 64-bit radio address.
const RADIO_ADDR: usize = 8;

/// What one line runs with.
pub struct Line {
    /// Its place among the lines (its address).
    pub index: u16,
    /// Its settings.
    pub settings: SerialLine,
    /// The device, opened.
    pub fd: OwnedFd,
    /// Worker 0's hand-over channel.
    pub to_worker: mpsc::Sender<Forward>,
    /// What the workers send to the line's address.
    pub from_workers: mpsc::Receiver<Bytes>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Line {
    /// Runs until every worker has gone (the channel from them closed).
    pub async fn run(self) {
        let Line { index, settings, fd, to_worker, mut from_workers, metrics } = self;
        let device = settings.device.display().to_string();
        let mut io = Io {
            index,
            framing: settings.framing,
            decoder: Box::new(serial::Decoder::new(settings.framing)),
            dropped: 0,
            families: HashMap::new(),
            to_worker,
            metrics,
            out: vec![0u8; 2 * MAX_FRAME],
        };
        let mut fd = match super::tty::register(fd) {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(line = index, %device, "cannot poll the serial device: {e}");
                None
            }
        };
        let mut buf = vec![0u8; 4096];
        loop {
            let Some(dev) = fd.as_ref() else {
                // Failed: drop what comes meanwhile, open again later.
                tokio::select! {
                    m = from_workers.recv() => if m.is_none() { return },
                    () = tokio::time::sleep(REOPEN) => {
                        io.decoder.reset();
                        fd = super::tty::open(&settings.device, settings.baud)
                            .and_then(super::tty::register)
                            .inspect(|_| info!(line = index, %device, "serial device open again"))
                            .ok();
                    }
                }
                continue;
            };
            let partial = io.decoder.partial();
            let failed = tokio::select! {
                r = dev.readable() => match r {
                    Err(e) => Some(e.to_string()),
                    Ok(mut ready) => match rustix::io::read(dev.get_ref(), &mut buf) {
                        Ok(0) => Some("closed".into()),
                        Ok(n) => {
                            io.read(buf.get(..n).unwrap_or_default());
                            None
                        }
                        Err(rustix::io::Errno::AGAIN) => {
                            ready.clear_ready();
                            None
                        }
                        Err(rustix::io::Errno::INTR) => None,
                        Err(e) => Some(e.to_string()),
                    },
                },
                m = from_workers.recv() => {
                    let Some(datagram) = m else { return };
                    io.write(dev, &datagram).await.err().map(|e| e.to_string())
                }
                () = tokio::time::sleep(GAP), if partial => {
                    io.decoder.reset();
                    None
                }
            };
            if let Some(why) = failed {
                warn!(line = index, %device, "serial device failed ({why}); opening it again");
                fd = None;
            }
        }
    }
}

/// A line's framing state.
struct Io {
    index: u16,
    framing: serial::Framing,
    decoder: Box<serial::Decoder<MAX_FRAME>>,
    /// Frames the decoder had dropped when last looked at.
    dropped: u64,
    /// The API frames each radio was heard with, to answer in kind.
    families: HashMap<[u8; RADIO_ADDR], Family>,
    to_worker: mpsc::Sender<Forward>,
    metrics: Arc<Metrics>,
    out: Vec<u8>,
}

impl Io {
    /// Decodes what was read and hands over every message.
    fn read(&mut self, data: &[u8]) {
        let from = super::line_addr(self.index);
        for &b in data {
            let Some(r) = self.decoder.push(b) else { continue };
            if r.direction == Direction::ToRadio {
                continue;
            }
            let datagram = match r.radio {
                None => Bytes::copy_from_slice(r.message),
                Some(radio) => {
                    if self.families.len() < 65_536 || self.families.contains_key(&radio.addr) {
                        self.families.insert(radio.addr, radio.family);
                    }
                    encapsulated(&radio.addr, r.message)
                }
            };
            let f =
                Forward::Datagram { from, link: crate::peer::Link::Udp, data: datagram, hops: 0 };
            if self.to_worker.try_send(f).is_err() {
                Metrics::inc(&self.metrics.forwards_dropped);
            }
        }
        let dropped = self.decoder.dropped();
        if dropped > self.dropped {
            let n = dropped - self.dropped;
            self.metrics.malformed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            debug!(line = self.index, frames = n, "unreadable serial frames dropped");
            self.dropped = dropped;
        }
    }

    /// Frames one datagram of the endpoint for the line and writes it.
    async fn write(&mut self, dev: &AsyncFd<OwnedFd>, datagram: &[u8]) -> std::io::Result<()> {
        let (node, message) = split_encapsulation(datagram);
        let to = match node.map(<[u8; RADIO_ADDR]>::try_from) {
            Some(Ok(addr)) => {
                Some(Radio { addr, family: self.families.get(&addr).copied().unwrap_or_default() })
            }
            _ => None,
        };
        if self.framing.addressed() != to.is_some() {
            debug!(line = self.index, "message for no radio of this line dropped");
            return Ok(());
        }
        let n = match serial::encode(self.framing, to, message, &mut self.out) {
            Ok(n) => n,
            Err(e) => {
                debug!(line = self.index, "message not framed: {e}");
                return Ok(());
            }
        };
        let mut left = self.out.get(..n).unwrap_or_default();
        while !left.is_empty() {
            let mut ready = dev.writable().await?;
            match rustix::io::write(dev.get_ref(), left) {
                Ok(k) => left = left.get(k..).unwrap_or_default(),
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// `message` inside the forwarder encapsulation (spec 5.5) with `node`
/// as its Wireless Node Id: Length (3 + the id), MsgType 0xFE, Ctrl 0.
fn encapsulated(node: &[u8; RADIO_ADDR], message: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(3 + RADIO_ADDR + message.len());
    v.extend_from_slice(&[3 + RADIO_ADDR as u8, 0xFE, 0]);
    v.extend_from_slice(node);
    v.extend_from_slice(message);
    Bytes::from(v)
}

/// The Wireless Node Id and the inner message of an encapsulated datagram,
/// or no id and the datagram itself.
fn split_encapsulation(datagram: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match datagram {
        [len, 0xFE, _, ..] if usize::from(*len) >= 3 && usize::from(*len) <= datagram.len() => {
            let (head, inner) = datagram.split_at(usize::from(*len));
            (head.get(3..), inner)
        }
        _ => (None, datagram),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encapsulation_round_trips() {
        let node = [1, 2, 3, 4, 5, 6, 7, 8];
        let d = encapsulated(&node, &[2, 0x16]);
        assert_eq!(split_encapsulation(&d), (Some(&node[..]), &[2u8, 0x16][..]));
        let f = mqttsn_codec::Frame::decode(&d).ok().and_then(|f| f.forwarder);
        assert_eq!(f.map(|f| f.node_id), Some(&node[..]));
        assert_eq!(split_encapsulation(&[2, 0x16]), (None, &[2u8, 0x16][..]));
        assert_eq!(split_encapsulation(&[9, 0xFE, 0]), (None, &[9u8, 0xFE, 0][..]));
    }
}
