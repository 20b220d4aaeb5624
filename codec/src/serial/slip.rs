//! SLIP (RFC 1055): each message between END octets, END and ESC inside
//! it escaped.
//!
//! [`encode`] writes END before and after the message, as RFC 1055
//! suggests, so line noise before a frame ends up in an empty or a broken
//! frame of its own. The decoder ignores empty frames and drops a frame
//! with an ESC followed by anything but ESC_END or ESC_ESC, or one longer
//! than its buffer, up to the next END.

use crate::EncodeError;

/// Ends a frame.
pub const END: u8 = 0xC0;
/// Starts an escape.
pub const ESC: u8 = 0xDB;
/// ESC ESC_END is an END octet of the message.
pub const ESC_END: u8 = 0xDC;
/// ESC ESC_ESC is an ESC octet of the message.
pub const ESC_ESC: u8 = 0xDD;

/// A SLIP decoder with a buffer of `N` octets.
#[derive(Debug, Clone)]
pub struct Decoder<const N: usize> {
    buf: [u8; N],
    filled: usize,
    escaped: bool,
    /// The frame is broken: skip to the next END.
    broken: bool,
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
        Self { buf: [0; N], filled: 0, escaped: false, broken: false, dropped: 0 }
    }

    /// Takes one octet; returns the message it completed, if any.
    pub fn push(&mut self, byte: u8) -> Option<&[u8]> {
        if byte == END {
            let (len, ok) = (self.filled, !self.broken && !self.escaped);
            self.filled = 0;
            self.escaped = false;
            self.broken = false;
            return if ok && len > 0 { self.buf.get(..len) } else { None };
        }
        if self.broken {
            return None;
        }
        let octet = if self.escaped {
            self.escaped = false;
            match byte {
                ESC_END => END,
                ESC_ESC => ESC,
                _ => return self.break_frame(),
            }
        } else if byte == ESC {
            self.escaped = true;
            return None;
        } else {
            byte
        };
        match self.buf.get_mut(self.filled) {
            Some(slot) => {
                *slot = octet;
                self.filled += 1;
                None
            }
            None => self.break_frame(),
        }
    }

    fn break_frame(&mut self) -> Option<&[u8]> {
        self.broken = true;
        self.dropped += 1;
        None
    }

    /// Forgets a partial frame.
    pub fn reset(&mut self) {
        if self.filled > 0 && !self.broken {
            self.dropped += 1;
        }
        self.filled = 0;
        self.escaped = false;
        self.broken = false;
    }

    /// Whether part of a frame has been read.
    pub fn partial(&self) -> bool {
        self.filled > 0 || self.escaped || self.broken
    }

    /// Frames dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The octets [`encode`] writes for `message`.
pub fn encoded_len(message: &[u8]) -> usize {
    2 + message.len() + message.iter().filter(|&&b| b == END || b == ESC).count()
}

/// Writes `message` as one SLIP frame (END, the escaped message, END).
pub fn encode(message: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    let needed = encoded_len(message);
    let out = out.get_mut(..needed).ok_or(EncodeError::BufferTooSmall { needed })?;
    let mut i = 0;
    let mut put = |b: u8| {
        if let Some(slot) = out.get_mut(i) {
            *slot = b;
        }
        i += 1;
    };
    put(END);
    for &b in message {
        match b {
            END => [ESC, ESC_END].into_iter().for_each(&mut put),
            ESC => [ESC, ESC_ESC].into_iter().for_each(&mut put),
            _ => put(b),
        }
    }
    put(END);
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_unescapes() {
        let msg = [5, 0x0C, END, ESC, 1];
        let mut out = [0u8; 16];
        let n = encode(&msg, &mut out).unwrap_or(0);
        assert_eq!(&out[..n], &[END, 5, 0x0C, ESC, ESC_END, ESC, ESC_ESC, 1, END]);
        let mut d = Decoder::<16>::new();
        let got = out[..n].iter().filter(|&&b| d.push(b).is_some_and(|m| m == msg)).count();
        assert_eq!(got, 1);
    }

    #[test]
    fn a_bad_escape_drops_the_frame_only() {
        let mut d = Decoder::<16>::new();
        let input = [END, 2, ESC, 7, 3, END, 2, 0x16, END];
        let n = input.iter().filter(|&&b| d.push(b).is_some()).count();
        assert_eq!(n, 1);
        assert_eq!(d.dropped(), 1);
    }

    #[test]
    fn a_frame_longer_than_the_buffer_is_dropped() {
        let mut d = Decoder::<4>::new();
        let input = [1, 2, 3, 4, 5, END, 2, 0x16, END];
        let n = input.iter().filter(|&&b| d.push(b).is_some()).count();
        assert_eq!(n, 1);
        assert_eq!(d.dropped(), 1);
    }

    #[test]
    fn too_small_an_output_says_what_it_needs() {
        assert_eq!(encode(&[END], &mut [0u8; 3]), Err(EncodeError::BufferTooSmall { needed: 4 }));
    }
}
