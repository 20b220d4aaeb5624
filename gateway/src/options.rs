//! The gateway's settings beside the session ones ([`SessionConfig`]
//! holds those).
//!
//! [`SessionConfig`]: crate::session::SessionConfig

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthTable;
use crate::cidr::Cidr;

/// Settings of the gateway beside the session ones: routing, admission,
/// discovery, QoS -1, expiry, key figures, the store, workers, the UDP
/// socket and the serial lines.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The shortest interval between two unsolicited DISCONNECTs to one
    /// address.
    pub unknown_disconnect_interval: Duration,
    /// How long a graceful shutdown waits for upstream sessions to close.
    pub shutdown_grace: Duration,
    /// The most sessions kept at once (connected or persistent); a CONNECT
    /// for a new ClientId beyond it gets CONNACK congestion. `None`: no
    /// limit but memory.
    pub max_sessions: Option<usize>,
    /// Bounds on CONNECTs, sessions and replies per source address and in
    /// all (see [`crate::admission`]).
    pub admission: crate::admission::Limits,
    /// The GwId in ADVERTISE and GWINFO.
    pub gateway_id: u8,
    /// Answer SEARCHGW with GWINFO: unicast to a searcher that sent it to
    /// the gateway's address, to the group when it came via the group.
    pub answer_searchgw: bool,
    /// Send ADVERTISE to this (broadcast or multicast) address at this
    /// interval, while the broker is reachable.
    pub advertise: Option<(SocketAddr, Duration)>,
    /// The discovery group (spec 5.4): worker 0 joins it, answers SEARCHGW
    /// sent to it with GWINFO to the group, and sends ADVERTISE to it every
    /// `advertise_every` (or at the interval of `advertise`, when set).
    pub multicast: Option<MulticastDiscovery>,
    /// QoS -1 PUBLISH without a connection (spec 6.8): `None` refuses it;
    /// `Some(list)` accepts it from sources in the list (empty: any).
    pub qos_minus_one: Option<Vec<Cidr>>,
    /// The ClientId of the gateway's own upstream connection (QoS -1
    /// publishes, broker reachability).
    pub own_client_id: String,
    /// Who may connect, and as whom upstream.
    pub auth: Arc<AuthTable>,
    /// How long the gateway keeps an ended CleanSession-false session
    /// (its registrations and subscriptions) for the sensor's return;
    /// `None`: for ever. The broker keeps its own session regardless.
    pub session_expiry: Option<Duration>,
    /// Publish key figures, retained, under this topic prefix at this
    /// interval (on the gateway's own upstream connection).
    pub sys_topics: Option<(String, Duration)>,
    /// The session store: CleanSession-false sessions are kept here and
    /// restored at start. `None`: in memory only.
    pub store_path: Option<std::path::PathBuf>,
    /// Worker threads, each with its own socket (SO_REUSEPORT), sessions
    /// and upstream connections; 0: one per core.
    pub workers: usize,
    /// The UDP receive buffer asked of the kernel (SO_RCVBUF), in octets;
    /// 0 keeps the system default.
    pub udp_receive_buffer: usize,
    /// The UDP send buffer (SO_SNDBUF), in octets; 0 keeps the default.
    pub udp_send_buffer: usize,
    /// Settings replaced while the gateway runs (SIGHUP): each worker
    /// takes them for the connections that follow. `None`: fixed.
    pub live: Option<Arc<crate::reload::Live>>,
    /// Serial sensor networks beside the UDP socket (see
    /// [`crate::serial`]); line N is the N-th of the list.
    pub serial: Vec<crate::serial::SerialLine>,
    /// `gateway.mode = "aggregating"`: the sensors of each worker share
    /// this pool of broker connections (its `worker` and `own_client_id`
    /// are filled in per worker). `None`: transparent, a connection per
    /// sensor.
    pub aggregating: Option<crate::upstream::aggregating::PoolOptions>,
}

/// Discovery on a multicast group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MulticastDiscovery {
    /// The group, its interface and hops.
    pub group: crate::multicast::Group,
    /// The interval of ADVERTISE to the group.
    pub advertise_every: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            unknown_disconnect_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            max_sessions: None,
            admission: crate::admission::Limits::default(),
            gateway_id: 1,
            answer_searchgw: true,
            advertise: None,
            multicast: None,
            qos_minus_one: None,
            own_client_id: "mqttsn-gateway".into(),
            auth: Arc::new(AuthTable::open()),
            session_expiry: Some(Duration::from_secs(24 * 3600)),
            sys_topics: None,
            store_path: None,
            workers: 0,
            udp_receive_buffer: 4 << 20,
            udp_send_buffer: 1 << 20,
            live: None,
            serial: Vec::new(),
            aggregating: None,
        }
    }
}
