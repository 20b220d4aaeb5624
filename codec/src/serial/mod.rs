//! MQTT-SN messages on a serial line: the framings that carry them between
//! a radio module (or a sensor wired to a UART) and the gateway.
//!
//! * [`raw`]: the messages back to back, each delimited by its own Length
//!   field, as the serial bridge of mqtt-sn-tools
//!   (`mqtt-sn-serial-bridge`) reads and writes them; one sensor per line.
//! * [`slip`]: SLIP (RFC 1055) around each message; one sensor per line.
//! * [`xbee`]: XBee API frames, API mode 1 (plain) or 2 (escaped), with
//!   the radio's 64-bit source address naming the sensor.
//!
//! Each decoder is sans-IO and allocation-free: it is fed one octet at a
//! time into a buffer of `N` octets it owns and hands out a message as soon
//! as one is complete. Arbitrary input never panics: what cannot be a frame
//! is dropped, counted, and the decoder finds the next frame on its own.
//! [`Decoder`] and [`encode`] choose among them by [`Framing`], for a
//! program that reads its framing from its configuration.

pub mod raw;
pub mod slip;
pub mod xbee;

use crate::EncodeError;

pub use xbee::{Direction, Family, Radio};

/// How MQTT-SN messages are framed on a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    /// Length-prefixed: the messages themselves ([`raw`]).
    Raw,
    /// SLIP, RFC 1055 ([`slip`]).
    Slip,
    /// XBee API mode 1: API frames without escaping ([`xbee`]).
    XbeeApi1,
    /// XBee API mode 2: API frames with escaping ([`xbee`]).
    XbeeApi2,
}

impl Framing {
    /// Every framing, in the order of their names in [`Framing::NAMES`].
    pub const ALL: [Self; 4] = [Self::Raw, Self::Slip, Self::XbeeApi1, Self::XbeeApi2];

    /// The names configurations and command lines use.
    pub const NAMES: &'static str = "raw, slip, xbee-api1, xbee-api2";

    /// The framing's name: `raw`, `slip`, `xbee-api1` or `xbee-api2`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Slip => "slip",
            Self::XbeeApi1 => "xbee-api1",
            Self::XbeeApi2 => "xbee-api2",
        }
    }

    /// The framing named `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether frames carry the sender's radio address (several sensors
    /// share the line); otherwise the line is point-to-point.
    pub const fn addressed(self) -> bool {
        matches!(self, Self::XbeeApi1 | Self::XbeeApi2)
    }
}

impl core::fmt::Display for Framing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// One MQTT-SN message read from a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received<'a> {
    /// Who sent it, on an addressed framing (for a frame going to a radio,
    /// whom it goes to).
    pub radio: Option<Radio>,
    /// Which way it goes: [`Direction::ToRadio`] only for an XBee transmit
    /// frame, which a gateway ignores and a program playing the radio reads.
    pub direction: Direction,
    /// The message, Length field first (not checked further: that is the
    /// MQTT-SN decoder's job).
    pub message: &'a [u8],
}

impl<'a> Received<'a> {
    fn unaddressed(message: &'a [u8]) -> Self {
        Self { radio: None, direction: Direction::FromRadio, message }
    }
}

/// A decoder for any [`Framing`], with a buffer of `N` octets: frames
/// longer than that are dropped.
#[derive(Debug, Clone)]
pub enum Decoder<const N: usize> {
    /// [`Framing::Raw`].
    Raw(raw::Decoder<N>),
    /// [`Framing::Slip`].
    Slip(slip::Decoder<N>),
    /// [`Framing::XbeeApi1`] and [`Framing::XbeeApi2`].
    Xbee(xbee::Decoder<N>),
}

impl<const N: usize> Decoder<N> {
    /// A decoder for `framing`.
    pub const fn new(framing: Framing) -> Self {
        match framing {
            Framing::Raw => Self::Raw(raw::Decoder::new()),
            Framing::Slip => Self::Slip(slip::Decoder::new()),
            Framing::XbeeApi1 => Self::Xbee(xbee::Decoder::new(false)),
            Framing::XbeeApi2 => Self::Xbee(xbee::Decoder::new(true)),
        }
    }

    /// Takes one octet; returns the message it completed, if any.
    pub fn push(&mut self, byte: u8) -> Option<Received<'_>> {
        match self {
            Self::Raw(d) => d.push(byte).map(Received::unaddressed),
            Self::Slip(d) => d.push(byte).map(Received::unaddressed),
            Self::Xbee(d) => d.push(byte).map(|(direction, radio, message)| Received {
                radio: Some(radio),
                direction,
                message,
            }),
        }
    }

    /// Forgets a partial frame (the line was silent for a while: whatever
    /// comes next starts a new frame).
    pub fn reset(&mut self) {
        match self {
            Self::Raw(d) => d.reset(),
            Self::Slip(d) => d.reset(),
            Self::Xbee(d) => d.reset(),
        }
    }

    /// Whether part of a frame has been read.
    pub fn partial(&self) -> bool {
        match self {
            Self::Raw(d) => d.partial(),
            Self::Slip(d) => d.partial(),
            Self::Xbee(d) => d.partial(),
        }
    }

    /// Frames dropped so far (malformed, too long, bad checksum).
    pub fn dropped(&self) -> u64 {
        match self {
            Self::Raw(d) => d.dropped(),
            Self::Slip(d) => d.dropped(),
            Self::Xbee(d) => d.dropped(),
        }
    }
}

/// Frames `message` for `framing` into `out`, as a host writes it to its
/// radio, and returns the octets written. An addressed framing needs the
/// radio it goes `to`; the others ignore it. The message is written as it
/// is (its Length field is not checked).
pub fn encode(
    framing: Framing,
    to: Option<Radio>,
    message: &[u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode_going(framing, Direction::ToRadio, to, message, out)
}

/// Like [`encode`], for either direction: [`Direction::FromRadio`] is
/// what a radio (or a sensor on the line) writes to its host, with `radio`
/// the sender.
pub fn encode_going(
    framing: Framing,
    direction: Direction,
    radio: Option<Radio>,
    message: &[u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    match framing {
        Framing::Raw => raw::encode(message, out),
        Framing::Slip => slip::encode(message, out),
        Framing::XbeeApi1 | Framing::XbeeApi2 => {
            let radio = radio.ok_or(EncodeError::NoAddress)?;
            xbee::encode(framing == Framing::XbeeApi2, direction, radio, message, out)
        }
    }
}

/// Copies `src` to the start of `out`.
fn copy_out(src: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    let dst = out.get_mut(..src.len()).ok_or(EncodeError::BufferTooSmall { needed: src.len() })?;
    dst.copy_from_slice(src);
    Ok(src.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Framing::ALL {
            assert_eq!(Framing::from_name(f.name()), Some(f));
            assert!(Framing::NAMES.contains(f.name()));
        }
        assert_eq!(Framing::from_name("xbee"), None);
    }
}
