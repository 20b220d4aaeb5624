//! Fixed-capacity byte buffers: no allocation, capacity in the type.

/// Up to `N` octets stored inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Buf<const N: usize> {
    data: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Buf<N> {
    fn default() -> Self {
        Self { data: [0; N], len: 0 }
    }
}

impl<const N: usize> core::fmt::Debug for Buf<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Buf({:02x?})", self.as_slice())
    }
}

impl<const N: usize> Buf<N> {
    /// A copy of `bytes`, or `None` when they do not fit.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut b = Self::default();
        b.data.get_mut(..bytes.len())?.copy_from_slice(bytes);
        b.len = bytes.len();
        Some(b)
    }

    /// The stored octets.
    pub fn as_slice(&self) -> &[u8] {
        self.data.get(..self.len).unwrap_or_default()
    }

    /// The stored octets, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.data.get_mut(..self.len).unwrap_or_default()
    }

    /// Encodes `packet` into the buffer.
    pub fn encode(packet: &mqttsn_codec::Packet<'_>) -> Option<Self> {
        let mut b = Self::default();
        b.len = packet.encode(&mut b.data).ok()?;
        Some(b)
    }
}
