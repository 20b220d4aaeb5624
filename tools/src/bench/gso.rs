//! Several datagrams of one size in one system call: UDP generic
//! segmentation offload (Linux `UDP_SEGMENT`). The kernel cuts the buffer
//! into datagrams of `segment` octets before they reach the receiving
//! socket, so the gateway sees ordinary datagrams, one per message, from
//! the sensor's address; the sender pays for one trip through its stack
//! instead of one per message.

use std::io::{self, IoSlice};

use tokio::net::UdpSocket;

/// Datagrams in one batch at most (the kernel takes 64).
pub const MAX_SEGMENTS: usize = 32;

/// Octets in one batch at most (one IP datagram).
pub const MAX_BATCH: usize = 65_000;

/// The control message `UDP_SEGMENT = segment`, laid out as `struct
/// cmsghdr` (a `size_t` length, then level and type) followed by the
/// two-octet size, padded to the header's alignment.
#[cfg(target_os = "linux")]
fn control(segment: u16) -> Vec<u8> {
    const SOL_UDP: i32 = 17;
    const UDP_SEGMENT: i32 = 103;
    let word = std::mem::size_of::<usize>();
    let align = |n: usize| n.div_ceil(word) * word;
    let header = align(word + 8);
    let mut c = Vec::with_capacity(header + align(2));
    c.extend_from_slice(&(header + 2).to_ne_bytes());
    c.extend_from_slice(&SOL_UDP.to_ne_bytes());
    c.extend_from_slice(&UDP_SEGMENT.to_ne_bytes());
    c.resize(header, 0);
    c.extend_from_slice(&segment.to_ne_bytes());
    c.resize(header + align(2), 0);
    c
}

/// Sends `buf` on the connected socket as datagrams of `segment` octets
/// (the last may be shorter).
#[cfg(target_os = "linux")]
pub fn send(sock: &UdpSocket, buf: &[u8], segment: usize) -> io::Result<()> {
    let seg = u16::try_from(segment).map_err(|_| io::ErrorKind::InvalidInput)?;
    let control = control(seg);
    let bufs = [IoSlice::new(buf)];
    let msg = socket2::MsgHdr::new().with_buffers(&bufs).with_control(&control);
    socket2::SockRef::from(sock).sendmsg(&msg, 0).map(|_| ())
}

/// Without `UDP_SEGMENT`: one datagram at a time.
#[cfg(not(target_os = "linux"))]
pub fn send(sock: &UdpSocket, buf: &[u8], segment: usize) -> io::Result<()> {
    let s = socket2::SockRef::from(sock);
    for d in buf.chunks(segment.max(1)) {
        s.send(d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_batch_arrives_as_datagrams() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        tx.connect(rx.local_addr().unwrap()).await.unwrap();
        let buf: Vec<u8> = (0..25u8).collect();
        send(&tx, &buf, 10).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let mut got = Vec::new();
        let mut d = [0u8; 64];
        for _ in 0..3 {
            let n = rx.recv(&mut d).unwrap();
            got.push(d[..n].to_vec());
        }
        assert_eq!(got, [buf[..10].to_vec(), buf[10..20].to_vec(), buf[20..].to_vec()]);
    }
}
