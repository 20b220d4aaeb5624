//! The message header (spec 5.2) and bounds-checked cursors over byte slices.
//!
//! Everything that reads or writes octets goes through [`Reader`] and
//! [`Writer`]: after one length check per message no access can go out of
//! bounds, and a short read is an error, never a panic.

use crate::{DecodeError, EncodeError, MsgType};

/// The largest total length an MQTT-SN message can declare.
pub const MAX_MESSAGE_LEN: usize = 65535;

/// A parsed message header: the Length field and the MsgType octet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The declared total length of the message, header included.
    pub len: u16,
    /// The octets the header occupies: 2 (short form) or 4 (long form).
    pub header_len: usize,
    /// The raw MsgType octet.
    pub msg_type: u8,
}

impl Header {
    /// Parses the header at the start of `buf` without looking at the rest
    /// of the message. The declared length is checked against its own
    /// header size but not against `buf.len()`.
    pub fn parse(buf: &[u8]) -> Result<Self, DecodeError> {
        match *buf {
            [] | [_] => Err(DecodeError::Truncated),
            [0x01, ..] => {
                let [_, hi, lo, msg_type, ..] = *buf else {
                    return Err(DecodeError::Truncated);
                };
                let len = u16::from_be_bytes([hi, lo]);
                if len < 4 {
                    return Err(DecodeError::InvalidLength { declared: len });
                }
                Ok(Header { len, header_len: 4, msg_type })
            }
            [len, msg_type, ..] => {
                if len < 2 {
                    return Err(DecodeError::InvalidLength { declared: u16::from(len) });
                }
                Ok(Header { len: u16::from(len), header_len: 2, msg_type })
            }
        }
    }

    /// Parses the header and checks that the declared length is exactly
    /// `buf.len()`. Returns the header and the message body after it.
    pub fn split(buf: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        let header = Self::parse(buf)?;
        if usize::from(header.len) != buf.len() {
            return Err(DecodeError::LengthMismatch { declared: header.len, actual: buf.len() });
        }
        let body = buf.get(header.header_len..).ok_or(DecodeError::Truncated)?;
        Ok((header, body))
    }

    /// The total length of a message whose body (after MsgType) has
    /// `body_len` octets, in the short form when it fits.
    pub fn total_len(body_len: usize) -> Result<usize, EncodeError> {
        let short = body_len + 2;
        let total = if short <= 255 { short } else { body_len + 4 };
        if total > MAX_MESSAGE_LEN {
            return Err(EncodeError::TooLong);
        }
        Ok(total)
    }

    /// Writes the header of a message of `total` octets (from
    /// [`Header::total_len`]) and type `msg_type`.
    pub(crate) fn emit(w: &mut Writer<'_>, total: usize, msg_type: MsgType) {
        if total <= 255 {
            w.u8(total as u8);
        } else {
            w.u8(0x01);
            w.u16(total as u16);
        }
        w.u8(msg_type as u8);
    }
}

/// A cursor over the body of one message; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    msg_type: MsgType,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], msg_type: MsgType) -> Self {
        Self { buf, msg_type }
    }

    fn short(&self) -> DecodeError {
        DecodeError::TooShort { msg_type: self.msg_type }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&v, rest) = self.buf.split_first().ok_or(self.short())?;
        self.buf = rest;
        Ok(v)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        match *self.buf {
            [hi, lo, ..] => {
                self.buf = &self.buf[2..];
                Ok(u16::from_be_bytes([hi, lo]))
            }
            _ => Err(self.short()),
        }
    }

    /// Everything that is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails with `TooLong` when octets are left over.
    pub(crate) fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TooLong { msg_type: self.msg_type })
        }
    }
}

/// A cursor over an output buffer whose size was checked beforehand.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// A writer over `buf`, which must hold at least `needed` octets.
    pub(crate) fn new(buf: &'a mut [u8], needed: usize) -> Result<Self, EncodeError> {
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        Ok(Self { buf, pos: 0 })
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        // Callers reserved the space with `Writer::new`: `get_mut` only
        // guards against a miscounted length, which tests would catch.
        if let Some(dst) = self.buf.get_mut(self.pos..self.pos + v.len()) {
            dst.copy_from_slice(v);
        }
        self.pos += v.len();
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
}
