//! A minimal writer of classic pcap files with raw IPv4/UDP packets, for
//! feeding datagrams to independent decoders such as tshark.

use std::io::Write;

/// LINKTYPE_RAW: each record is an IP packet.
const LINKTYPE_RAW: u32 = 101;

/// A pcap file being built in memory.
pub struct Pcap {
    bytes: Vec<u8>,
    count: u32,
}

impl Default for Pcap {
    fn default() -> Self {
        Self::new()
    }
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Pcap {
    /// An empty capture (global header only).
    pub fn new() -> Self {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        bytes.extend_from_slice(&2u16.to_le_bytes());
        bytes.extend_from_slice(&4u16.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&65_535u32.to_le_bytes());
        bytes.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
        Self { bytes, count: 0 }
    }

    /// Adds one UDP datagram from 127.0.0.1:`sport` to 127.0.0.1:`dport`.
    pub fn udp(&mut self, sport: u16, dport: u16, payload: &[u8]) {
        let udp_len = 8 + payload.len();
        let total = 20 + udp_len;
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0, // don't fragment
            64,
            17, // UDP
            0,
            0,
            127,
            0,
            0,
            1,
            127,
            0,
            0,
            1,
        ];
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut packet = ip;
        packet.extend_from_slice(&sport.to_be_bytes());
        packet.extend_from_slice(&dport.to_be_bytes());
        packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
        packet.extend_from_slice(&0u16.to_be_bytes()); // no checksum (IPv4)
        packet.extend_from_slice(payload);
        self.count += 1;
        self.bytes.extend_from_slice(&self.count.to_le_bytes()); // seconds
        self.bytes.extend_from_slice(&0u32.to_le_bytes());
        self.bytes.extend_from_slice(&(packet.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(&(packet.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(&packet);
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes the capture.
    pub fn write_to(&self, mut w: impl Write) -> std::io::Result<()> {
        w.write_all(&self.bytes)
    }
}
