//! The gateway's UDP sockets: one per worker on the same address
//! (SO_REUSEPORT, so the kernel spreads sensors over the workers by source
//! address), with receive and send buffers sized for bursts.
//!
//! An IPv6 address is bound dual-stack (IPV6_V6ONLY off): IPv4 sensors
//! arrive as IPv4-mapped addresses (`::ffff:a.b.c.d`). The workers hand
//! the endpoint plain IPv4 addresses ([`canonical`]) and map them back
//! for the socket ([`for_socket`]), so a sensor has one address whatever
//! the socket's family, in the sessions, the store and the logs.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV6};

use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
use tracing::{info, warn};

/// The bound sockets of a gateway, one per worker.
#[derive(Debug)]
pub struct Listener {
    sockets: Vec<std::net::UdpSocket>,
    local: SocketAddr,
    dtls: Option<(std::net::UdpSocket, crate::dtls::DtlsSettings)>,
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
    /// silently given half of the sensors. The IPv6 wildcard `[::]` is
    /// bound dual-stack; where the system has no IPv6, `0.0.0.0` on the
    /// same port is bound instead (logged).
    pub fn bind(addr: SocketAddr, workers: usize, buffers: Buffers) -> io::Result<Self> {
        match Self::bind_exactly(addr, workers, buffers) {
            Err(e) if is_unspecified_v6(addr) && no_ipv6(&e) => {
                let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
                info!("IPv6 is not available ({e}): listening on {v4} instead of {addr}");
                Self::bind_exactly(v4, workers, buffers)
            }
            r => r,
        }
    }

    fn bind_exactly(addr: SocketAddr, workers: usize, buffers: Buffers) -> io::Result<Self> {
        let workers = workers.max(1);
        if workers == 1 {
            let s = socket(addr, false)?;
            let local = s.local_addr()?;
            size(&s, buffers, true);
            return Ok(Self { sockets: vec![s], local, dtls: None });
        }
        if addr.port() != 0 {
            drop(socket(addr, false)?);
        }
        let first = socket(addr, true)?;
        let local = first.local_addr()?;
        size(&first, buffers, true);
        let mut sockets = vec![first];
        for _ in 1..workers {
            let s = socket(local, true)?;
            size(&s, buffers, false);
            sockets.push(s);
        }
        Ok(Self { sockets, local, dtls: None })
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

    /// Adds the DTLS listener: one socket bound to `addr` (dual-stack like
    /// the others), served by the first worker.
    pub fn with_dtls(
        mut self,
        addr: SocketAddr,
        settings: crate::dtls::DtlsSettings,
    ) -> io::Result<Self> {
        let mut one = Self::bind(addr, 1, Buffers::default())?;
        let socket = one.sockets.pop().ok_or_else(|| io::Error::other("no DTLS socket"))?;
        self.dtls = Some((socket, settings));
        Ok(self)
    }

    /// The DTLS listener's address, if there is one.
    pub fn dtls_addr(&self) -> Option<SocketAddr> {
        self.dtls.as_ref().and_then(|(s, _)| s.local_addr().ok())
    }

    /// Takes the DTLS listener's socket and settings out.
    pub fn take_dtls(&mut self) -> Option<(std::net::UdpSocket, crate::dtls::DtlsSettings)> {
        self.dtls.take()
    }
}

/// A non-blocking UDP socket bound to `addr`; an IPv6 one dual-stack.
fn socket(addr: SocketAddr, reuseport: bool) -> io::Result<std::net::UdpSocket> {
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(
        family,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    if addr.is_ipv6() {
        sockopt::set_ipv6_v6only(&fd, false)?;
    }
    if reuseport {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    rustix::net::bind(&fd, &addr)?;
    Ok(std::net::UdpSocket::from(fd))
}

fn is_unspecified_v6(addr: SocketAddr) -> bool {
    matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified())
}

/// The errors of a system without IPv6 (the module absent, or disabled).
fn no_ipv6(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    [rustix::io::Errno::AFNOSUPPORT, rustix::io::Errno::ADDRNOTAVAIL]
        .iter()
        .any(|errno| code == Some(errno.raw_os_error()))
}

/// A peer's address as the gateway keeps it: an IPv4-mapped IPv6 address
/// (from a dual-stack socket) as plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, a.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// `addr` in the form a socket of this family sends to: IPv4 as
/// IPv4-mapped for an IPv6 (dual-stack) socket.
pub fn for_socket(addr: SocketAddr, ipv6_socket: bool) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if ipv6_socket => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        other => other,
    }
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
    fn the_ipv6_wildcard_is_dual_stack() {
        let l = Listener::bind("[::]:0".parse().unwrap(), 2, Buffers::default()).unwrap();
        let port = l.local_addr().port();
        assert!(l.local_addr().is_ipv6());
        let socks = l.into_sockets();
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        v4.send_to(b"x", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 4];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let from = loop {
            if let Some(from) = socks.iter().find_map(|s| s.recv_from(&mut buf).ok()) {
                break from.1;
            }
            assert!(std::time::Instant::now() < deadline, "nothing received over IPv4");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(from.is_ipv6(), "mapped: {from}");
        assert_eq!(canonical(from), v4.local_addr().unwrap());
        assert_eq!(for_socket(canonical(from), true), from);
    }

    #[test]
    fn only_the_ipv6_wildcard_falls_back_and_only_for_a_missing_ipv6() {
        let errno = |e: rustix::io::Errno| io::Error::from_raw_os_error(e.raw_os_error());
        assert!(no_ipv6(&errno(rustix::io::Errno::AFNOSUPPORT)));
        assert!(no_ipv6(&errno(rustix::io::Errno::ADDRNOTAVAIL)));
        assert!(!no_ipv6(&errno(rustix::io::Errno::ADDRINUSE)));
        assert!(!no_ipv6(&errno(rustix::io::Errno::ACCESS)));
        assert!(is_unspecified_v6("[::]:1884".parse().unwrap()));
        assert!(!is_unspecified_v6("[::1]:1884".parse().unwrap()));
        assert!(!is_unspecified_v6("0.0.0.0:1884".parse().unwrap()));
        // A taken port is an error, not a fall-back to IPv4.
        let taken = std::net::UdpSocket::bind("[::]:0").unwrap();
        let e = Listener::bind(taken.local_addr().unwrap(), 1, Buffers::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn addresses_are_kept_plain_and_mapped_for_the_socket() {
        let v4: SocketAddr = "10.1.2.3:5".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:5".parse().unwrap();
        let v6: SocketAddr = "[fe80::1]:5".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v4), v4);
        assert_eq!(canonical(v6), v6);
        assert_eq!(for_socket(v4, true), mapped);
        assert_eq!(for_socket(v4, false), v4);
        assert_eq!(for_socket(v6, true), v6);
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
