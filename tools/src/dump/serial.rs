//! `mqttsn dump --serial`: the MQTT-SN messages read from a serial line,
//! in any of the codec's framings, one line each.

use std::io::{ErrorKind, Write as _};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use mqttsn_codec::serial::{Decoder, Direction, Framing, Radio};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::termios::{self, ControlModes, OptionalActions};

/// The longest frame read.
const MAX_FRAME: usize = 65_536 + 32;

/// A partial frame is forgotten after the line was silent this long.
const GAP: Duration = Duration::from_millis(100);

/// The serial line to read.
#[derive(Debug, Clone)]
pub struct SerialSource {
    /// The device.
    pub device: PathBuf,
    /// The baud rate.
    pub baud: u32,
    /// The framing.
    pub framing: Framing,
}

/// Opens `device` in raw mode (8N1, no echo, no flow control) at `baud`,
/// non-blocking.
fn open(device: &std::path::Path, baud: u32) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(device, flags, Mode::empty())?;
    let mut t = termios::tcgetattr(&fd)?;
    t.make_raw();
    t.control_modes |= ControlModes::CLOCAL | ControlModes::CREAD;
    t.control_modes &= !(ControlModes::CSTOPB | ControlModes::PARENB);
    t.set_speed(baud)?;
    termios::tcsetattr(&fd, OptionalActions::Now, &t)?;
    Ok(fd)
}

/// One line for a message read from the line: time, the radio (on an
/// addressed framing; `->` for a frame going to it), length and the
/// decoded message.
pub fn format_message(time: &str, radio: Option<Radio>, dir: Direction, message: &[u8]) -> String {
    let mut line = format!("{time} serial");
    if let Some(r) = radio {
        line.push_str(if dir == Direction::ToRadio { " -> radio " } else { " radio " });
        for b in r.addr {
            line.push_str(&format!("{b:02x}"));
        }
    }
    super::push_decoded(&mut line, message);
    line
}

/// Reads the line and prints every message until `count` were printed or
/// stdout is closed (or forever).
pub fn run(source: &SerialSource, count: Option<u64>) -> std::io::Result<()> {
    let fd = open(&source.device, source.baud).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot open {}: {e}", source.device.display()))
    })?;
    eprintln!(
        "reading {} at {} baud, framing {}",
        source.device.display(),
        source.baud,
        source.framing
    );
    let mut printed = 0u64;
    if count == Some(0) {
        return Ok(());
    }
    let mut decoder = Box::new(Decoder::<MAX_FRAME>::new(source.framing));
    let mut buf = vec![0u8; 4096];
    let gap = Timespec::try_from(GAP).map_err(std::io::Error::other)?;
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match poll(&mut fds, Some(&gap)) {
            Ok(0) => {
                decoder.reset();
                continue;
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let n = match rustix::io::read(&fd, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            // A pseudo-terminal whose other end is closed for now.
            Err(rustix::io::Errno::IO) => {
                std::thread::sleep(GAP);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let time = super::timestamp(SystemTime::now());
        for &b in buf.get(..n).unwrap_or_default() {
            let Some(r) = decoder.push(b) else { continue };
            let line = format_message(&time, r.radio, r.direction, r.message);
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{line}").and_then(|()| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e),
            }
            printed += 1;
            if count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqttsn_codec::serial::Family;

    #[test]
    fn lines() {
        let radio = Radio { addr: [0, 0x13, 0xa2, 0, 1, 2, 3, 4], family: Family::Packet };
        let line = format_message("t", Some(radio), Direction::FromRadio, &[2, 0x16]);
        assert_eq!(line, "t serial radio 0013a20001020304 len=2 PINGREQ");
        let line = format_message("t", Some(radio), Direction::ToRadio, &[2, 0x17]);
        assert!(line.starts_with("t serial -> radio 0013a20001020304 len=2 PINGRESP"), "{line}");
        let line = format_message("t", None, Direction::FromRadio, &[2, 0x99]);
        assert!(line.starts_with("t serial len=2 MALFORMED"), "{line}");
    }
}
