//! The gateway's UDP sockets: one per worker on the same address
//! (SO_REUSEPORT, so the kernel spreads sensors over the workers by source
//! address), with receive and send buffers sized for bursts.

use std::io;
use std::net::SocketAddr;

use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
use tracing::{info, warn};

/// The bound sockets of a gateway, one per worker.
#[derive(Debug)]
pub struct Listener {
    sockets: Vec<std::net::UdpSocket>,
    local: SocketAddr,
}

/// Socket buffer sizes asked of the kernel (0: the system default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Buffers {
    /// SO_RCVBUF.
    pub receive: usize,
    /// SO_SNDBUF.
    pub send: usize,
}

impl Listener {
    /// Binds `workers` sockets (at least one) to `addr`. With more than
    /// one, the address is first checked to be free without SO_REUSEPORT,
    /// so a second gateway on the same port is refused as before, never
    /// silently given half of the sensors.
    pub fn bind(addr: SocketAddr, workers: usize, buffers: Buffers) -> io::Result<Self> {
        let workers = workers.max(1);
        if workers == 1 {
            let s = std::net::UdpSocket::bind(addr)?;
            let local = s.local_addr()?;
            size(&s, buffers, true);
            s.set_nonblocking(true)?;
            return Ok(Self { sockets: vec![s], local });
        }
        if addr.port() != 0 {
            drop(std::net::UdpSocket::bind(addr)?);
        }
        let first = reuseport_socket(addr)?;
        let local = first.local_addr()?;
        size(&first, buffers, true);
        let mut sockets = vec![first];
        for _ in 1..workers {
            let s = reuseport_socket(local)?;
            size(&s, buffers, false);
            sockets.push(s);
        }
        Ok(Self { sockets, local })
    }

    /// The address the sockets are bound to (the port chosen, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many sockets (workers) there are.
    pub fn workers(&self) -> usize {
        self.sockets.len()
    }

    /// The sockets, one per worker.
    pub fn into_sockets(self) -> Vec<std::net::UdpSocket> {
        self.sockets
    }
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(
        family,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    sockopt::set_socket_reuseport(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    Ok(std::net::UdpSocket::from(fd))
}

/// Sets the buffer sizes; logs (once, for the first socket) what the
/// kernel granted.
fn size(s: &std::net::UdpSocket, b: Buffers, log: bool) {
    if b.receive > 0 {
        if let Err(e) = sockopt::set_socket_recv_buffer_size(s, b.receive) {
            warn!("cannot set the UDP receive buffer to {} octets: {e}", b.receive);
        }
    }
    if b.send > 0 {
        if let Err(e) = sockopt::set_socket_send_buffer_size(s, b.send) {
            warn!("cannot set the UDP send buffer to {} octets: {e}", b.send);
        }
    }
    if !log {
        return;
    }
    // Linux reports twice what it grants for data (the rest is its own
    // bookkeeping), and caps the request at net.core.rmem_max/wmem_max.
    let granted = sockopt::socket_recv_buffer_size(s).unwrap_or(0) / 2;
    let sent = sockopt::socket_send_buffer_size(s).unwrap_or(0) / 2;
    info!("UDP receive buffer {} KiB, send buffer {} KiB", granted / 1024, sent / 1024);
    if b.receive > 0 && granted < b.receive {
        warn!(
            "the kernel granted a UDP receive buffer of {} KiB of the {} KiB asked \
             (gateway.udp_receive_buffer): bursts may be dropped; raise net.core.rmem_max",
            granted / 1024,
            b.receive / 1024
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn workers_share_one_port() {
        let l = Listener::bind("127.0.0.1:0".parse().unwrap(), 3, Buffers::default()).unwrap();
        let port = l.local_addr().port();
        assert_ne!(port, 0);
        let socks = l.into_sockets();
        assert_eq!(socks.len(), 3);
        for s in &socks {
            assert_eq!(s.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn a_taken_port_is_refused_even_with_several_workers() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = Listener::bind(addr, 2, Buffers::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let e = Listener::bind(addr, 1, Buffers::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn the_receive_buffer_is_asked_for() {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            1,
            Buffers { receive: 1 << 20, send: 0 },
        )
        .unwrap();
        let s = &l.into_sockets()[0];
        // Granted up to net.core.rmem_max; at least more than the minimum.
        assert!(sockopt::socket_recv_buffer_size(s).unwrap() > 4096);
    }
}
