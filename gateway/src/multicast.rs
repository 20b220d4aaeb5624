//! Gateway discovery on a multicast group (spec 5.4, 6.1): a socket bound
//! to the group's port and joined to the group receives SEARCHGW sent to
//! it; GWINFO answers and ADVERTISE go to the group from the gateway's
//! listening socket, so sensors learn the address they connect to.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};

/// Where multicast datagrams leave and the group is joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// The system's choice (the route to the group).
    Default,
    /// The IPv4 interface with this address.
    Addr(Ipv4Addr),
    /// The interface with this index (IPv6, or IPv4 by index).
    Index(u32),
}

/// The discovery group and how it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// The group address and port (`225.1.1.1:1883`, `[ff02::1:1883]:1883`).
    pub addr: SocketAddr,
    /// Where it is joined and sent to.
    pub interface: Interface,
    /// IP_MULTICAST_TTL / IPV6_MULTICAST_HOPS of what is sent to it.
    pub hops: u32,
}

impl Group {
    /// Opens the receiving socket: bound to the group's port (with
    /// SO_REUSEADDR and SO_REUSEPORT, as other programs on the host may
    /// listen on the group too), joined to the group on the interface,
    /// non-blocking.
    pub fn join(&self) -> io::Result<std::net::UdpSocket> {
        let fd = match self.addr.ip() {
            IpAddr::V4(group) => {
                let fd = open(AddressFamily::INET)?;
                // Bound to the group: only datagrams sent to it arrive.
                rustix::net::bind(&fd, &self.addr)?;
                match self.interface {
                    Interface::Default => {
                        sockopt::set_ip_add_membership(&fd, &group, &Ipv4Addr::UNSPECIFIED)?
                    }
                    Interface::Addr(a) => sockopt::set_ip_add_membership(&fd, &group, &a)?,
                    Interface::Index(i) => sockopt::set_ip_add_membership_with_ifindex(
                        &fd,
                        &group,
                        &Ipv4Addr::UNSPECIFIED,
                        i,
                    )?,
                }
                fd
            }
            IpAddr::V6(group) => {
                let fd = open(AddressFamily::INET6)?;
                sockopt::set_ipv6_v6only(&fd, true)?;
                let any = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, self.addr.port()));
                rustix::net::bind(&fd, &any)?;
                let index = match self.interface {
                    Interface::Index(i) => i,
                    Interface::Default => 0,
                    Interface::Addr(_) => return Err(needs_index()),
                };
                sockopt::set_ipv6_add_membership(&fd, &group, index)?;
                fd
            }
        };
        Ok(std::net::UdpSocket::from(fd))
    }

    /// Sets up `sender` (the gateway's listening socket, IPv4, or IPv6
    /// dual-stack) to send to the group: interface, hops, and loopback on
    /// (clients on the gateway's own host hear it too).
    pub fn prepare_sender(&self, sender: &std::net::UdpSocket) -> io::Result<()> {
        let ipv6_socket = sender.local_addr()?.is_ipv6();
        match self.addr.ip() {
            // IPv4 options apply to a dual-stack socket's IPv4 traffic.
            IpAddr::V4(group) => {
                match self.interface {
                    Interface::Default => {}
                    Interface::Addr(a) => sockopt::set_ip_multicast_if(sender, &a)?,
                    Interface::Index(i) => sockopt::set_ip_multicast_if_with_ifindex(
                        sender,
                        &group,
                        &Ipv4Addr::UNSPECIFIED,
                        i,
                    )?,
                }
                sockopt::set_ip_multicast_ttl(sender, self.hops)?;
                sockopt::set_ip_multicast_loop(sender, true)?;
            }
            IpAddr::V6(_) => {
                if !ipv6_socket {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "an IPv6 group needs an IPv6 gateway.listen address",
                    ));
                }
                match self.interface {
                    Interface::Index(i) => sockopt::set_ipv6_multicast_if(sender, i)?,
                    Interface::Default => {}
                    Interface::Addr(_) => return Err(needs_index()),
                }
                sockopt::set_ipv6_multicast_hops(sender, self.hops)?;
                sockopt::set_ipv6_multicast_loop(sender, true)?;
            }
        }
        Ok(())
    }
}

fn needs_index() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "an IPv6 group needs an interface name or index")
}

fn open(family: AddressFamily) -> io::Result<rustix::fd::OwnedFd> {
    let fd = rustix::net::socket_with(
        family,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    Ok(fd)
}

/// The index of the network interface `name` (`lo`, `eth0`) in this
/// network namespace (SIOCGIFINDEX).
pub fn interface_index(name: &str) -> Option<u32> {
    // The kernel's limit on interface names (IFNAMSIZ less the NUL).
    if name.is_empty() || name.len() > 15 {
        return None;
    }
    let fd = open(AddressFamily::INET).ok()?;
    rustix::net::netdevice::name_to_index(&fd, name).ok().filter(|&i| i > 0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_loopback_interface_has_an_index() {
        assert!(interface_index("lo").is_some_and(|i| i > 0));
        assert_eq!(interface_index(""), None);
        assert_eq!(interface_index("a-name-far-too-long-for-one"), None);
        assert_eq!(interface_index("no-such-interface"), None);
    }

    #[test]
    fn a_joined_socket_receives_what_is_sent_to_the_group() {
        // A group port of its own: tests run in parallel.
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let group = Group {
            addr: SocketAddr::from(([239, 255, 77, 1], port)),
            interface: Interface::Addr(Ipv4Addr::LOCALHOST),
            hops: 1,
        };
        let rx = group.join().unwrap();
        // From a dual-stack sender too.
        for bind in ["127.0.0.1:0", "[::]:0"] {
            let tx = std::net::UdpSocket::bind(bind).unwrap();
            if bind.starts_with('[') {
                // std binds [::] dual-stack on Linux by default.
                group.prepare_sender(&tx).unwrap();
                let to = crate::udp::for_socket(group.addr, true);
                tx.send_to(b"hello", to).unwrap();
            } else {
                group.prepare_sender(&tx).unwrap();
                tx.send_to(b"hello", group.addr).unwrap();
            }
            let mut buf = [0u8; 16];
            let deadline = Instant::now() + Duration::from_secs(5);
            let n = loop {
                match rx.recv_from(&mut buf) {
                    Ok((n, _)) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "nothing arrived on the group ({bind})");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(&buf[..n], b"hello");
        }
    }

    #[test]
    fn an_ipv6_group_is_joined_on_an_interface_by_index() {
        let group = Group {
            addr: "[ff02::1:1883]:0".parse().unwrap(),
            interface: Interface::Index(interface_index("lo").unwrap()),
            hops: 1,
        };
        group.join().unwrap();
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(group.prepare_sender(&v4).is_err(), "an IPv4 socket cannot send to it");
        let bad = Group { interface: Interface::Addr(Ipv4Addr::LOCALHOST), ..group };
        assert!(bad.join().is_err());
    }
}
