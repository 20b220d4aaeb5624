//! What a run is asked to do, checked before anything is sent: the
//! addresses (loopback only unless allowed), the numbers, the QoS mix.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::schedule::QosMix;
use super::BenchError;

/// Which passes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// MQTT-SN sensors through the gateway.
    Gateway,
    /// MQTT clients straight to the broker (the ceiling).
    Direct,
    /// The direct pass, then the gateway pass, with ratios.
    Compare,
}

/// Options of `mqttsn bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Gateway host.
    pub host: String,
    /// Gateway UDP port.
    pub port: u16,
    /// Broker, `mqtt://HOST:PORT`, `HOST:PORT` or `HOST` (port 1883).
    pub broker: String,
    /// Which passes run.
    pub mode: Mode,
    /// Simulated sensors.
    pub sensors: u32,
    /// Messages each publishing sensor sends.
    pub count: u64,
    /// Target rate of all sensors together (msg/s); `None`: as fast as
    /// each sensor can.
    pub rate: Option<f64>,
    /// The QoS of the messages.
    pub mix: QosMix,
    /// QoS 1/2 messages in flight per sensor.
    pub inflight: u16,
    /// CleanSession false.
    pub persistent: bool,
    /// Payload size in octets.
    pub size: usize,
    /// Topic prefix.
    pub prefix: String,
    /// Bound of each pass.
    pub max_time: Duration,
    /// Handshakes (CONNECT ... REGACK/SUBACK) in flight at most.
    pub connect_window: u32,
    /// MQTT-SN retransmission interval.
    pub retry: Duration,
    /// MQTT-SN retransmissions before giving up.
    pub max_retries: u32,
    /// After the last message is sent: wait this long without a new
    /// arrival before counting what is missing as lost.
    pub drain: Duration,
    /// Share of the sensors that sleep (percent, 0 to 100).
    pub sleepers: f64,
    /// The Duration of their DISCONNECT, in seconds.
    pub sleep_duration: u16,
    /// Messages published to each sleeper while it sleeps.
    pub sleep_messages: u64,
    /// Their QoS.
    pub sleep_qos: u8,
    /// Broker to sensor: messages published per topic (0: none).
    pub down_count: u64,
    /// Their rate on the broker, all topics together (before fan-out).
    pub down_rate: Option<f64>,
    /// Their QoS.
    pub down_qos: u8,
    /// Sensors per topic.
    pub fanout: u32,
    /// The gateway's process, for CPU and memory.
    pub gateway_pid: Option<u32>,
    /// The broker's process, for CPU and memory.
    pub broker_pid: Option<u32>,
    /// Source addresses the sensors' sockets are spread over (127.0.0.1,
    /// 127.0.0.2, ...); `None`: as many as the sensors need, at most
    /// [`SENSORS_PER_ADDRESS`] on each, when the gateway is on IPv4
    /// loopback.
    pub source_addresses: Option<u32>,
    /// The first of them (default 127.0.0.1): several processes of the
    /// tool, each under the descriptor limit, each take their own.
    pub source: Option<Ipv4Addr>,
    /// Allow addresses off this machine.
    pub allow_remote: bool,
    /// Print a progress line every second.
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1884,
            broker: "127.0.0.1:1883".into(),
            mode: Mode::Gateway,
            sensors: 10,
            count: 100,
            rate: None,
            mix: QosMix::default(),
            inflight: 1,
            persistent: false,
            size: 24,
            prefix: "bench".into(),
            max_time: Duration::from_secs(60),
            connect_window: 128,
            retry: Duration::from_secs(1),
            max_retries: 3,
            drain: Duration::from_secs(1),
            sleepers: 0.0,
            sleep_duration: 60,
            sleep_messages: 10,
            sleep_qos: 1,
            down_count: 0,
            down_rate: None,
            down_qos: 1,
            fanout: 1,
            gateway_pid: None,
            broker_pid: None,
            source_addresses: None,
            source: None,
            allow_remote: false,
            progress: false,
        }
    }
}

/// Sensors given one source address at most when `--source-addresses`
/// is not set: each takes an ephemeral UDP port of its address, and
/// Linux's default range (32768 to 60999) holds 28,232 of them, some taken
/// by other programs.
pub const SENSORS_PER_ADDRESS: u32 = 20_000;

/// The most source addresses: 127.0.0.1 to 127.1.0.0.
pub const MAX_SOURCE_ADDRESSES: u32 = 65_536;

/// The addresses a run talks to, resolved and checked.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    /// The gateway (UDP).
    pub gateway: SocketAddr,
    /// The broker (TCP).
    pub broker: SocketAddr,
    /// Where the sensors' sockets are bound.
    pub sources: Sources,
}

/// The local addresses the sensors' sockets are bound to, in turn: sensor
/// I takes address I modulo the count, so each address holds an equal
/// share (and the gateway's per-address bounds see an equal share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    /// The first address (127.0.0.1 for a gateway on IPv4 loopback).
    pub first: IpAddr,
    /// How many, counting up from `first`; more than one only on IPv4
    /// loopback.
    pub count: u32,
}

impl Sources {
    /// The sources for `sensors` sensors sending to `gateway`, `asked`
    /// addresses or as many as needed.
    fn new(
        gateway: SocketAddr,
        sensors: u32,
        asked: Option<u32>,
        from: Option<Ipv4Addr>,
    ) -> Result<Self, BenchError> {
        let first: IpAddr = match (gateway.ip().to_canonical().is_loopback(), gateway.is_ipv4()) {
            (true, true) => from.unwrap_or(Ipv4Addr::new(127, 0, 0, 1)).into(),
            (true, false) => Ipv6Addr::LOCALHOST.into(),
            (false, true) => Ipv4Addr::UNSPECIFIED.into(),
            (false, false) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let spreads = first.is_ipv4() && first.is_loopback();
        if let Some(f) = from.filter(|_| !spreads) {
            return Err(BenchError::Usage(format!(
                "--source {f}: only for a gateway on an IPv4 loopback address (it is {gateway})"
            )));
        }
        if !first.is_unspecified() && first.is_ipv4() && !first.is_loopback() {
            return Err(BenchError::Usage(format!("--source {first}: not in 127.0.0.0/8")));
        }
        let count = match asked {
            Some(0) => {
                return Err(BenchError::Usage("--source-addresses: at least 1".into()));
            }
            Some(n) if n > MAX_SOURCE_ADDRESSES => {
                return Err(BenchError::Usage(format!(
                    "--source-addresses {n}: at most {MAX_SOURCE_ADDRESSES}"
                )));
            }
            Some(n) if n > 1 && !spreads => {
                return Err(BenchError::Usage(format!(
                    "--source-addresses {n}: sources are spread over 127.0.0.0/8 only, so the \
                     gateway must be on an IPv4 loopback address (it is {gateway})"
                )));
            }
            Some(n) => n,
            None if spreads => sensors.div_ceil(SENSORS_PER_ADDRESS).max(1),
            None => 1,
        };
        if let IpAddr::V4(a) = first {
            let last = u64::from(u32::from(a)) + u64::from(count) - 1;
            if count > 1 && last > u64::from(u32::from(Ipv4Addr::new(127, 255, 255, 254))) {
                return Err(BenchError::Usage(format!(
                    "--source {a} with {count} source addresses: past 127.255.255.254"
                )));
            }
        }
        Ok(Self { first, count })
    }

    /// The address of client `index`.
    pub fn of(&self, index: u32) -> IpAddr {
        match self.first {
            IpAddr::V4(a) if self.count > 1 => {
                Ipv4Addr::from(u32::from(a).wrapping_add(index % self.count)).into()
            }
            a => a,
        }
    }
}

fn resolve(what: &str, s: &str) -> Result<SocketAddr, BenchError> {
    s.to_socket_addrs()
        .map_err(|e| BenchError::Usage(format!("{what} {s}: {e}")))?
        .next()
        .ok_or_else(|| BenchError::Usage(format!("{what} {s}: no address")))
}

fn loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The broker address of `--broker`: `mqtt://HOST:PORT`, `HOST:PORT` or
/// `HOST`.
fn broker_addr(s: &str) -> Result<String, BenchError> {
    let rest = match s.split_once("://") {
        Some(("mqtt", rest)) => rest,
        Some((scheme, _)) => {
            return Err(BenchError::Usage(format!(
                "--broker {s}: only mqtt:// is supported (not {scheme}://)"
            )))
        }
        None => s,
    };
    let rest = rest.trim_end_matches('/');
    let has_port = match rest.rsplit_once(':') {
        Some((h, p)) => p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')),
        None => false,
    };
    Ok(if has_port { rest.to_owned() } else { format!("{rest}:1883") })
}

impl BenchOptions {
    /// Checks the numbers and resolves the addresses; a non-loopback
    /// address is refused unless `allow_remote`.
    pub fn check(&self) -> Result<Targets, BenchError> {
        let usage = |m: String| Err(BenchError::Usage(m));
        if self.sensors == 0 {
            return usage("--sensors must be at least 1".into());
        }
        if self.size > 60_000 {
            return usage(format!("--size {}: at most 60000 octets", self.size));
        }
        if self.count > u64::from(u32::MAX) || self.down_count > u64::from(u32::MAX) {
            return usage("--count and --down-count: at most 4294967295".into());
        }
        if !(0.0..=100.0).contains(&self.sleepers) {
            return usage(format!("--sleepers {}: a percentage, 0 to 100", self.sleepers));
        }
        for (flag, r) in [("--rate", self.rate), ("--down-rate", self.down_rate)] {
            if r.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                return usage(format!("{flag}: a rate above 0 messages per second"));
            }
        }
        if self.sleep_qos > 2 || self.down_qos > 2 {
            return usage("--sleep-qos and --down-qos: 0, 1 or 2".into());
        }
        if self.fanout == 0 || self.inflight == 0 || self.connect_window == 0 {
            return usage("--fanout, --inflight and --connect-window: at least 1".into());
        }
        if self.max_time.is_zero() {
            return usage("--max-time: at least 1 second".into());
        }
        if self.prefix.is_empty() || self.prefix.contains(['+', '#']) {
            return usage(format!("--topic {:?}: a topic name without wildcards", self.prefix));
        }
        let gateway = resolve("gateway", &format!("{}:{}", self.host, self.port));
        let gateway = match self.host.parse::<IpAddr>() {
            Ok(ip) => Ok(SocketAddr::new(ip, self.port)),
            Err(_) => gateway,
        }?;
        let broker = resolve("--broker", &broker_addr(&self.broker)?)?;
        if !self.allow_remote {
            let mut checked = vec![("broker", broker)];
            if self.mode != Mode::Direct {
                checked.push(("gateway", gateway));
            }
            for (what, a) in checked {
                if !loopback(a.ip()) {
                    return Err(BenchError::Remote(format!(
                        "refusing to load the {what} at {a}: not a loopback address \
                         (127.0.0.0/8, ::1). A load test floods its target; pass \
                         --allow-remote to aim it at another machine"
                    )));
                }
            }
        }
        let sources = Sources::new(gateway, self.sensors, self.source_addresses, self.source)?;
        Ok(Targets { gateway, broker, sources })
    }

    /// Sensors that sleep.
    pub fn sleeper_count(&self) -> u32 {
        ((f64::from(self.sensors) * self.sleepers / 100.0).round() as u32).min(self.sensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_forms() {
        let a = |s: &str| broker_addr(s).unwrap_or_default();
        assert_eq!(a("mqtt://127.0.0.1:1999"), "127.0.0.1:1999");
        assert_eq!(a("mqtt://localhost"), "localhost:1883");
        assert_eq!(a("127.0.0.1"), "127.0.0.1:1883");
        assert_eq!(a("[::1]:7"), "[::1]:7");
        assert!(broker_addr("mqtts://x:1").is_err());
    }

    #[test]
    fn sources_spread_over_loopback_as_needed() {
        let gw: SocketAddr = ([127, 0, 0, 1], 1884).into();
        let s = |n, asked| Sources::new(gw, n, asked, None).ok();
        let one = Sources { first: Ipv4Addr::new(127, 0, 0, 1).into(), count: 1 };
        assert_eq!(s(10, None), Some(one));
        assert_eq!(s(SENSORS_PER_ADDRESS, None).map(|s| s.count), Some(1));
        assert_eq!(s(SENSORS_PER_ADDRESS + 1, None).map(|s| s.count), Some(2));
        let five = s(100_000, None);
        assert_eq!(five.map(|s| s.count), Some(5));
        let at = |i| five.map(|s| s.of(i).to_string()).unwrap_or_default();
        assert_eq!(
            [at(0), at(1), at(4), at(5)],
            ["127.0.0.1", "127.0.0.2", "127.0.0.5", "127.0.0.1"]
        );
        let wide = s(10, Some(300)).map(|s| s.of(299).to_string());
        assert_eq!(wide.as_deref(), Some("127.0.1.44"));
        assert!(s(10, Some(0)).is_none());
        assert!(s(10, Some(MAX_SOURCE_ADDRESSES + 1)).is_none());
        // From another first address, for a second process.
        let from = |a: [u8; 4], n, asked| Sources::new(gw, n, asked, Some(a.into()));
        let second = from([127, 0, 1, 1], 30_000, None).map(|s| s.of(1).to_string()).ok();
        assert_eq!(second.as_deref(), Some("127.0.1.2"));
        assert!(from([10, 0, 0, 1], 10, None).is_err());
        assert!(from([127, 255, 255, 254], 10, Some(2)).is_err());
        // Elsewhere: one address, the unspecified one; more are refused.
        let v6: SocketAddr = "[::1]:1884".parse().unwrap_or(gw);
        assert_eq!(Sources::new(v6, 100_000, None, None).map(|s| s.of(7)).ok(), Some(v6.ip()));
        assert!(Sources::new(v6, 10, Some(2), None).is_err());
        assert!(Sources::new(v6, 10, None, Some([127, 0, 0, 2].into())).is_err());
        let far: SocketAddr = ([192, 0, 2, 1], 1884).into();
        let any = Sources::new(far, 100_000, None, None).map(|s| s.of(3).to_string()).ok();
        assert_eq!(any.as_deref(), Some("0.0.0.0"));
        assert!(Sources::new(far, 10, Some(2), None).is_err());
    }

    #[test]
    fn remote_addresses_are_refused() {
        let o = BenchOptions { host: "192.0.2.1".into(), ..BenchOptions::default() };
        assert!(matches!(o.check(), Err(BenchError::Remote(_))));
        let o = BenchOptions { broker: "mqtt://192.0.2.1".into(), ..BenchOptions::default() };
        assert!(matches!(o.check(), Err(BenchError::Remote(_))));
        let o = BenchOptions { host: "192.0.2.1".into(), allow_remote: true, ..Default::default() };
        assert!(o.check().is_ok());
        let o =
            BenchOptions { host: "::1".into(), broker: "localhost".into(), ..Default::default() };
        assert!(o.check().is_ok());
    }
}
