//! A serial line for end-to-end tests: a pseudo-terminal pair whose slave
//! the gateway opens as its serial device, while the test plays the radio
//! (or the sensor on the line) on the master.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mqttsn_codec::serial::{encode_going, Decoder, Direction, Framing, Radio};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::OFlags;

const MAX_FRAME: usize = 65_536 + 32;

/// The radio side of one serial line.
pub struct Port {
    master: OwnedFd,
    /// Kept open so the line stays up while the gateway closes and opens
    /// its end (a restart).
    _slave: OwnedFd,
    device: PathBuf,
    framing: Framing,
    radio: Option<Radio>,
    decoder: Box<Decoder<MAX_FRAME>>,
    messages: VecDeque<Vec<u8>>,
}

impl Port {
    /// A new pseudo-terminal pair in raw mode; the sensor on it speaks
    /// `framing`, as `radio` on an addressed framing.
    pub fn open(framing: Framing, radio: Option<Radio>) -> Self {
        let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let master = rustix::pty::openpt(
            rustix::pty::OpenptFlags::RDWR
                | rustix::pty::OpenptFlags::NOCTTY
                | rustix::pty::OpenptFlags::CLOEXEC,
        )
        .expect("openpt");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
        let device = PathBuf::from(name.to_string_lossy().into_owned());
        let slave =
            rustix::fs::open(&device, flags, rustix::fs::Mode::empty()).expect("open slave");
        // Raw before the gateway opens it, so nothing written meanwhile is
        // echoed or held for a line end.
        let mut t = rustix::termios::tcgetattr(&slave).expect("tcgetattr");
        t.make_raw();
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t)
            .expect("tcsetattr");
        let fl = rustix::fs::fcntl_getfl(&master).expect("getfl");
        rustix::fs::fcntl_setfl(&master, fl | OFlags::NONBLOCK).expect("setfl");
        Self {
            master,
            _slave: slave,
            device,
            framing,
            radio,
            decoder: Box::new(Decoder::new(framing)),
            messages: VecDeque::new(),
        }
    }

    /// The device the gateway opens.
    pub fn device(&self) -> PathBuf {
        self.device.clone()
    }

    /// The gateway's setting for this line.
    pub fn line(&self) -> mqttsn_gateway::serial::SerialLine {
        mqttsn_gateway::serial::SerialLine {
            device: self.device(),
            baud: 115_200,
            framing: self.framing,
        }
    }

    /// Writes one message, framed as the radio sends it to its host.
    pub fn send(&self, message: &[u8]) {
        let mut out = vec![0u8; 2 * message.len() + 64];
        let n = encode_going(self.framing, Direction::FromRadio, self.radio, message, &mut out)
            .expect("frame");
        self.write_all(&out[..n]);
    }

    /// Writes octets as they are.
    pub fn write_all(&self, mut data: &[u8]) {
        let deadline = Instant::now() + crate::sn::WAIT;
        while !data.is_empty() {
            assert!(Instant::now() < deadline, "the serial line takes nothing");
            match rustix::io::write(&self.master, data) {
                Ok(n) => data = &data[n..],
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {
                    self.wait(PollFlags::OUT, Duration::from_millis(10));
                }
                Err(e) => panic!("write to the serial line: {e}"),
            }
        }
    }

    fn wait(&self, what: PollFlags, wait: Duration) {
        let mut fds = [PollFd::new(&self.master, what)];
        let t = Timespec::try_from(wait).expect("timespec");
        let _ = poll(&mut fds, Some(&t));
    }

    /// The next message the gateway wrote; `None` after `wait`.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.messages.pop_front() {
                return Some(m);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.wait(PollFlags::IN, left.min(Duration::from_millis(50)));
            match rustix::io::read(&self.master, &mut buf) {
                Ok(n) => {
                    for &b in &buf[..n] {
                        if let Some(r) = self.decoder.push(b) {
                            if self.radio.is_none() || r.radio == self.radio {
                                self.messages.push_back(r.message.to_vec());
                            }
                        }
                    }
                }
                // Nothing yet, or the gateway's end is closed for a moment.
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR | rustix::io::Errno::IO) => {
                }
                Err(e) => panic!("read from the serial line: {e}"),
            }
        }
    }
}
