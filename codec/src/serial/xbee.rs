//! XBee API frames (Digi's API operation, `AP` = 1 or 2) carrying MQTT-SN
//! messages as RF data, with the radio's 64-bit address naming the sensor.
//!
//! A frame is the start delimiter 0x7E, a two-octet length of the frame
//! data, the frame data (an API identifier, then its fields) and a
//! checksum: 0xFF minus the low octet of the sum of the frame data. In API
//! mode 2 every octet after the delimiter that is 0x7E, 0x7D, 0x11 or 0x13
//! is sent as 0x7D and the octet XOR 0x20 (the length counts unescaped
//! octets).
//!
//! Read: 0x90 (Receive Packet: 64-bit source, 16-bit source, options,
//! RF data; Zigbee, DigiMesh and current 802.15.4 firmware) and 0x80 (RX
//! Packet with 64-bit address: source, RSSI, options, RF data; legacy
//! 802.15.4 firmware), and the transmit frames below (what a host writes, for a
//! tool that plays the radio). Other frames (transmit status, modem
//! status, AT responses) are skipped. A host sends 0x10 (Transmit Request) to a radio heard
//! with 0x90, 0x00 (TX Request with 64-bit address) to one heard with
//! 0x80, frame id 0 (no transmit status asked for).
//!
//! Resynchronisation: in mode 2 an unescaped 0x7E always starts a frame;
//! in mode 1 a frame with a bad checksum is dropped and the decoder looks
//! for the next 0x7E.

use crate::EncodeError;

/// The start delimiter.
pub const START: u8 = 0x7E;
/// API mode 2's escape octet.
pub const ESCAPE: u8 = 0x7D;
/// XON, escaped in API mode 2.
pub const XON: u8 = 0x11;
/// XOFF, escaped in API mode 2.
pub const XOFF: u8 = 0x13;

/// Receive Packet (0x90).
pub const RECEIVE_PACKET: u8 = 0x90;
/// RX Packet, 64-bit address (0x80).
pub const RX_64: u8 = 0x80;
/// Transmit Request (0x10).
pub const TRANSMIT_REQUEST: u8 = 0x10;
/// TX Request, 64-bit address (0x00).
pub const TX_64: u8 = 0x00;

/// Which API frames a radio speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Family {
    /// Receive Packet 0x90, Transmit Request 0x10.
    #[default]
    Packet,
    /// RX Packet 0x80, TX Request 0x00 (legacy 802.15.4 firmware).
    Legacy,
}

/// A radio on the network: its 64-bit address and the frames it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Radio {
    /// The 64-bit address (SH then SL), most significant octet first.
    pub addr: [u8; 8],
    /// The frames it speaks.
    pub family: Family,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the start delimiter.
    Idle,
    LengthHigh,
    LengthLow,
    Data,
    Checksum,
}

/// An XBee API frame decoder with a buffer of `N` octets of frame data.
#[derive(Debug, Clone)]
pub struct Decoder<const N: usize> {
    buf: [u8; N],
    escaped_mode: bool,
    state: State,
    escape: bool,
    len: usize,
    filled: usize,
    sum: u8,
    dropped: u64,
}

impl<const N: usize> Decoder<N> {
    /// A decoder for API mode 2 (`escaped`) or 1.
    pub const fn new(escaped: bool) -> Self {
        Self {
            buf: [0; N],
            escaped_mode: escaped,
            state: State::Idle,
            escape: false,
            len: 0,
            filled: 0,
            sum: 0,
            dropped: 0,
        }
    }

    /// Takes one octet; returns the message of a frame it completed, if
    /// any.
    pub fn push(&mut self, byte: u8) -> Option<Message<'_>> {
        let mut byte = byte;
        if self.escaped_mode {
            if byte == START {
                if self.state != State::Idle {
                    self.dropped += 1;
                }
                self.start();
                return None;
            }
            if self.state == State::Idle {
                return None;
            }
            if self.escape {
                self.escape = false;
                byte ^= 0x20;
            } else if byte == ESCAPE {
                self.escape = true;
                return None;
            }
        }
        match self.state {
            State::Idle => {
                if byte == START {
                    self.start();
                }
                None
            }
            State::LengthHigh => {
                self.len = usize::from(byte) << 8;
                self.state = State::LengthLow;
                None
            }
            State::LengthLow => {
                self.len |= usize::from(byte);
                if self.len == 0 || self.len > N {
                    self.dropped += 1;
                    self.state = State::Idle;
                } else {
                    self.state = State::Data;
                }
                None
            }
            State::Data => {
                if let Some(slot) = self.buf.get_mut(self.filled) {
                    *slot = byte;
                }
                self.filled += 1;
                self.sum = self.sum.wrapping_add(byte);
                if self.filled >= self.len {
                    self.state = State::Checksum;
                }
                None
            }
            State::Checksum => {
                self.state = State::Idle;
                if self.sum.wrapping_add(byte) != 0xFF {
                    self.dropped += 1;
                    return None;
                }
                let data = self.buf.get(..self.len)?;
                parse(data)
            }
        }
    }

    fn start(&mut self) {
        self.state = State::LengthHigh;
        self.escape = false;
        self.len = 0;
        self.filled = 0;
        self.sum = 0;
    }

    /// Forgets a partial frame.
    pub fn reset(&mut self) {
        if self.partial() {
            self.dropped += 1;
        }
        self.state = State::Idle;
        self.escape = false;
    }

    /// Whether part of a frame has been read.
    pub fn partial(&self) -> bool {
        self.state != State::Idle
    }

    /// Frames dropped so far (bad length or checksum, cut short in mode 2).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Which way a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the radio to its host: a receive frame (0x90, 0x80), whose
    /// address is the sender's.
    FromRadio,
    /// From the host to its radio: a transmit frame (0x10, 0x00), whose
    /// address is the destination's.
    ToRadio,
}

/// A frame carrying a message: its direction, the other radio and the RF
/// data.
pub type Message<'a> = (Direction, Radio, &'a [u8]);

/// The direction, radio and RF data of a frame's data; `None` for a frame
/// that carries no message.
fn parse(data: &[u8]) -> Option<Message<'_>> {
    let (&api, rest) = data.split_first()?;
    // Where the address starts and where the RF data starts, after the API
    // identifier.
    let (dir, family, at, fields) = match api {
        // 64-bit source, 16-bit source, options.
        RECEIVE_PACKET => (Direction::FromRadio, Family::Packet, 0, 11),
        // 64-bit source, RSSI, options.
        RX_64 => (Direction::FromRadio, Family::Legacy, 0, 10),
        // Frame id, 64-bit destination, 16-bit destination, radius,
        // options.
        TRANSMIT_REQUEST => (Direction::ToRadio, Family::Packet, 1, 13),
        // Frame id, 64-bit destination, options.
        TX_64 => (Direction::ToRadio, Family::Legacy, 1, 10),
        _ => return None,
    };
    let addr = rest.get(at..at + 8)?.try_into().ok()?;
    Some((dir, Radio { addr, family }, rest.get(fields..)?))
}

/// The frame data before the RF data of a frame going `dir` with `radio`.
fn header(dir: Direction, radio: Radio) -> ([u8; 14], usize) {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = radio.addr;
    match (dir, radio.family) {
        // 16-bit address unknown (0xFFFE), options: acknowledged.
        (Direction::FromRadio, Family::Packet) => {
            ([RECEIVE_PACKET, a0, a1, a2, a3, a4, a5, a6, a7, 0xFF, 0xFE, 0x01, 0, 0], 12)
        }
        // RSSI -40 dBm, options 0.
        (Direction::FromRadio, Family::Legacy) => {
            ([RX_64, a0, a1, a2, a3, a4, a5, a6, a7, 0x28, 0, 0, 0, 0], 11)
        }
        // Frame id 0 (no transmit status), 16-bit address unknown
        // (0xFFFE), broadcast radius 0 (the maximum), options 0.
        (Direction::ToRadio, Family::Packet) => {
            ([TRANSMIT_REQUEST, 0, a0, a1, a2, a3, a4, a5, a6, a7, 0xFF, 0xFE, 0, 0], 14)
        }
        // Frame id 0, options 0.
        (Direction::ToRadio, Family::Legacy) => {
            ([TX_64, 0, a0, a1, a2, a3, a4, a5, a6, a7, 0, 0, 0, 0], 11)
        }
    }
}

/// Writes a transmit frame carrying `message` to `to` (what a host sends
/// its radio), escaped for API mode 2 when `escaped`, and returns the
/// octets written.
pub fn encode_transmit(
    escaped: bool,
    to: Radio,
    message: &[u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    encode(escaped, Direction::ToRadio, to, message, out)
}

/// Writes a frame going `dir` with `radio` carrying `message`, escaped for
/// API mode 2 when `escaped`, and returns the octets written.
pub fn encode(
    escaped: bool,
    dir: Direction,
    radio: Radio,
    message: &[u8],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let (head, head_len) = header(dir, radio);
    let head = head.get(..head_len).unwrap_or_default();
    let len = head_len + message.len();
    let len16 = u16::try_from(len).map_err(|_| EncodeError::TooLong)?;
    let sum = head.iter().chain(message).fold(0u8, |s, &b| s.wrapping_add(b));
    let [hi, lo] = len16.to_be_bytes();
    let checksum = 0xFF - sum;
    let body = [hi, lo].into_iter().chain(head.iter().copied()).chain(message.iter().copied());
    let body = body.chain(core::iter::once(checksum));
    let needs_escape = |b: u8| escaped && matches!(b, START | ESCAPE | XON | XOFF);
    let needed = 1 + body.clone().map(|b| if needs_escape(b) { 2 } else { 1 }).sum::<usize>();
    let out = out.get_mut(..needed).ok_or(EncodeError::BufferTooSmall { needed })?;
    let mut i = 0;
    let mut put = |b: u8| {
        if let Some(slot) = out.get_mut(i) {
            *slot = b;
        }
        i += 1;
    };
    put(START);
    for b in body {
        if needs_escape(b) {
            put(ESCAPE);
            put(b ^ 0x20);
        } else {
            put(b);
        }
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RADIO: [u8; 8] = [0x00, 0x13, 0xA2, 0x00, 0x40, 0x7E, 0x11, 0x13];

    #[test]
    fn a_receive_packet_from_the_digi_manual() {
        // Receive Packet example of the XBee manuals: "TxData", from
        // 0013A20040522BAA, 16-bit 7D84, options 01.
        let frame = [
            0x7E, 0x00, 0x12, 0x90, 0x00, 0x13, 0xA2, 0x00, 0x40, 0x52, 0x2B, 0xAA, 0x7D, 0x84,
            0x01, 0x52, 0x78, 0x44, 0x61, 0x74, 0x61, 0x0D,
        ];
        let mut d = Decoder::<64>::new(false);
        let got = frame.iter().filter_map(|&b| d.push(b).map(|(d, r, m)| (d, r, m.len()))).last();
        let addr = [0x00, 0x13, 0xA2, 0x00, 0x40, 0x52, 0x2B, 0xAA];
        let radio = Radio { addr, family: Family::Packet };
        assert_eq!(got, Some((Direction::FromRadio, radio, 6)));
    }

    #[test]
    fn transmit_frames_escape_in_mode_2_only() {
        let to = Radio { addr: RADIO, family: Family::Packet };
        let mut out = [0u8; 64];
        let n1 = encode_transmit(false, to, &[2, 0x16], &mut out).unwrap_or(0);
        assert_eq!(n1, 1 + 2 + 14 + 2 + 1);
        assert_eq!(&out[..4], &[START, 0, 16, TRANSMIT_REQUEST]);
        let n2 = encode_transmit(true, to, &[2, 0x16], &mut out).unwrap_or(0);
        // 0x7E, 0x11 and 0x13 of the address are escaped (and perhaps
        // the checksum).
        assert!(n2 >= n1 + 3);
        assert!(!out[1..n2].contains(&START));
        let legacy = Radio { addr: RADIO, family: Family::Legacy };
        let n = encode_transmit(false, legacy, &[2, 0x16], &mut out).unwrap_or(0);
        assert_eq!(&out[..4], &[START, 0, 13, TX_64]);
        assert_eq!(n, 1 + 2 + 11 + 2 + 1);
    }

    #[test]
    fn a_bad_checksum_drops_the_frame() {
        let mut d = Decoder::<64>::new(false);
        let frame = [START, 0, 2, 0x8B, 0x00, 0x00];
        assert!(frame.iter().all(|&b| d.push(b).is_none()));
        assert_eq!(d.dropped(), 1);
    }

    #[test]
    fn other_frames_are_skipped() {
        // Transmit status: valid, not a message.
        let mut d = Decoder::<64>::new(false);
        let data = [0x8B, 0x01, 0xFF, 0xFE, 0x00, 0x00, 0x00];
        let sum = data.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        let mut frame = [START, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0xFF - sum];
        frame[3..10].copy_from_slice(&data);
        assert!(frame.iter().all(|&b| d.push(b).is_none()));
        assert_eq!(d.dropped(), 0);
    }
}
