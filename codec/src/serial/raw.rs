//! The raw framing of mqtt-sn-tools' serial bridge: the MQTT-SN messages
//! themselves, back to back, each delimited by its own Length field.
//!
//! `mqtt-sn-serial-bridge` (mqtt-sn-tools) opens the line 8N1 in raw mode
//! at the chosen baud rate (9600 by default), reads one octet, the Length,
//! refuses 0, then reads Length - 1 more octets and forwards them as one
//! datagram; toward the line it writes each datagram as it is (as many
//! octets as its first octet says). It knows only the one-octet Length
//! (messages up to 255 octets); this decoder also takes the three-octet
//! form (0x01 and a two-octet Length), so longer messages pass too.
//!
//! The framing has no delimiter, so a lost octet shifts every later
//! frame. The decoder resynchronises in two ways: a Length that cannot be
//! (0, or a three-octet Length under 4) drops that octet, and
//! [`Decoder::reset`] forgets a partial frame after the line was silent —
//! the bridge relies on such gaps too (it reads with VTIME).

use crate::EncodeError;

/// A raw-framing decoder with a buffer of `N` octets.
#[derive(Debug, Clone)]
pub struct Decoder<const N: usize> {
    buf: [u8; N],
    filled: usize,
    /// Octets of a frame too long for the buffer still to skip.
    skip: usize,
    dropped: u64,
}

impl<const N: usize> Default for Decoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Decoder<N> {
    /// An empty decoder.
    pub const fn new() -> Self {
        Self { buf: [0; N], filled: 0, skip: 0, dropped: 0 }
    }

    /// Takes one octet; returns the message it completed, if any.
    pub fn push(&mut self, byte: u8) -> Option<&[u8]> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        let Some(slot) = self.buf.get_mut(self.filled) else {
            // Only with N < 3: nothing fits.
            self.filled = 0;
            self.dropped += 1;
            return None;
        };
        *slot = byte;
        self.filled += 1;
        let total = match self.buf.get(..self.filled)? {
            [0] => return self.drop_octets(),
            [1] | [1, _] => return None,
            [1, hi, lo, ..] => {
                let total = usize::from(u16::from_be_bytes([*hi, *lo]));
                if total < 4 {
                    return self.drop_octets();
                }
                total
            }
            [len, ..] => usize::from(*len),
            [] => return None,
        };
        if total > N {
            self.skip = total - self.filled;
            self.filled = 0;
            self.dropped += 1;
            return None;
        }
        if self.filled < total {
            return None;
        }
        self.filled = 0;
        self.buf.get(..total)
    }

    fn drop_octets(&mut self) -> Option<&[u8]> {
        self.filled = 0;
        self.dropped += 1;
        None
    }

    /// Forgets a partial frame.
    pub fn reset(&mut self) {
        if self.partial() {
            self.dropped += 1;
        }
        self.filled = 0;
        self.skip = 0;
    }

    /// Whether part of a frame has been read.
    pub fn partial(&self) -> bool {
        self.filled > 0 || self.skip > 0
    }

    /// Frames dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Writes `message` for the line: the message itself.
pub fn encode(message: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    super::copy_out(message, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all<const N: usize>(d: &mut Decoder<N>, input: &[u8]) -> usize {
        input.iter().filter(|&&b| d.push(b).is_some()).count()
    }

    #[test]
    fn messages_back_to_back() {
        let mut d = Decoder::<64>::new();
        let mut got = [[0u8; 8]; 2];
        let mut n = 0;
        for &b in &[2, 0x16, 4, 0x0C, 0xAA, 0xBB] {
            if let Some(m) = d.push(b) {
                got[n][..m.len()].copy_from_slice(m);
                n += 1;
            }
        }
        assert_eq!(n, 2);
        assert_eq!(&got[0][..2], &[2, 0x16]);
        assert_eq!(&got[1][..4], &[4, 0x0C, 0xAA, 0xBB]);
    }

    #[test]
    fn three_octet_length() {
        let mut msg = [7u8; 300];
        msg[..3].copy_from_slice(&[1, 1, 44]);
        let mut d = Decoder::<512>::new();
        let last = msg.iter().map(|&b| d.push(b).map(<[u8]>::len)).last().flatten();
        assert_eq!(last, Some(300));
    }

    #[test]
    fn zero_and_short_lengths_are_dropped_and_the_stream_goes_on() {
        let mut d = Decoder::<64>::new();
        assert_eq!(all(&mut d, &[0, 0, 1, 0, 2, 2, 0x16]), 1);
        assert_eq!(d.dropped(), 3);
    }

    #[test]
    fn a_frame_longer_than_the_buffer_is_skipped() {
        let mut d = Decoder::<8>::new();
        let mut input = [9u8; 22];
        input[0] = 20;
        input[20..].copy_from_slice(&[2, 0x16]);
        assert_eq!(all(&mut d, &input), 1);
        assert_eq!(d.dropped(), 1);
    }

    #[test]
    fn reset_forgets_a_partial_frame() {
        let mut d = Decoder::<64>::new();
        assert_eq!(all(&mut d, &[5, 0x0C]), 0);
        assert!(d.partial());
        d.reset();
        assert_eq!(all(&mut d, &[2, 0x16]), 1);
    }
}
