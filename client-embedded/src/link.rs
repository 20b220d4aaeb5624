//! What the blocking adapter ([`crate::std_udp`]) carries its datagrams
//! over: a plain UDP socket, or (feature `dtls`) a DTLS association on
//! one. One enum, so every call of the adapter works over both.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::adapter::UdpError;
#[cfg(feature = "dtls")]
use crate::std_dtls::Association;

/// A datagram link to the gateway.
pub(crate) enum Link {
    /// Datagrams as they are.
    Udp(UdpSocket),
    /// One datagram per DTLS application-data record.
    #[cfg(feature = "dtls")]
    Dtls(Box<Association>),
}

impl Link {
    /// Sends one datagram to `to` (a DTLS association has its gateway).
    pub(crate) fn send_to(&mut self, datagram: &[u8], to: SocketAddr) -> Result<(), UdpError> {
        match self {
            Self::Udp(sock) => sock.send_to(datagram, to).map(drop).map_err(UdpError::Io),
            #[cfg(feature = "dtls")]
            Self::Dtls(association) => association.send(datagram).map_err(UdpError::Dtls),
        }
    }

    /// Waits at most `wait` (not zero) for a datagram, as
    /// `UdpSocket::recv_from`: a time out is an `Io` error of kind
    /// `WouldBlock` or `TimedOut`.
    pub(crate) fn recv_from(
        &mut self,
        buf: &mut [u8],
        wait: Duration,
    ) -> Result<(usize, SocketAddr), UdpError> {
        match self {
            Self::Udp(sock) => {
                sock.set_read_timeout(Some(wait))?;
                Ok(sock.recv_from(buf)?)
            }
            #[cfg(feature = "dtls")]
            Self::Dtls(association) => match association.recv(buf, wait)? {
                Some(n) => Ok((n, association.gateway())),
                None => Err(std::io::Error::from(std::io::ErrorKind::WouldBlock).into()),
            },
        }
    }
}
