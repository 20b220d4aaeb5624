//! Opening a serial device: raw mode (8N1, no echo, no flow control, no
//! line editing) at a baud rate, non-blocking, through rustix's termios.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::termios::{self, ControlModes, OptionalActions};

/// Opens `device` for reading and writing, in raw mode at `baud`. What
/// waited in its input is read like the rest (the decoders find the first
/// whole frame), so a sensor's message sent just before is not lost.
pub fn open(device: &Path, baud: u32) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(device, flags, Mode::empty())?;
    let mut t = termios::tcgetattr(&fd)?;
    t.make_raw();
    // Ignore the modem lines; enable the receiver.
    t.control_modes |= ControlModes::CLOCAL | ControlModes::CREAD;
    t.control_modes &= !(ControlModes::CSTOPB | ControlModes::PARENB);
    t.set_speed(baud)?;
    termios::tcsetattr(&fd, OptionalActions::Now, &t)?;
    Ok(fd)
}

/// Registers an opened device with the runtime's reactor.
///
/// `AsyncFd::new` is deprecated in favour of the `unsafe` `register`,
/// whose contract is that the descriptor stays open and the same for the
/// `AsyncFd`'s whole life: an `OwnedFd` moved into it guarantees exactly
/// that, and this crate forbids `unsafe`.
#[allow(deprecated)]
pub fn register(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    tokio::io::unix::AsyncFd::new(fd)
}
