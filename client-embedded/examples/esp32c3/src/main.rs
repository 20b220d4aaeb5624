//! An ESP32-C3 sensor on Wi-Fi: DHCP through embassy-net, then the
//! `mqttsn-client` embassy adapter toward an MQTT-SN gateway. Every period
//! it publishes the chip's temperature at QoS 1, then sleeps (MQTT-SN
//! DISCONNECT with Duration) until the next one; on waking (PINGREQ with
//! its ClientId) it takes what the gateway buffered for it (messages on
//! `sensors/<id>/cmd`), then connects again to publish.
//!
//! Settings are read at build time from the environment:
//!
//! | variable           | default        |
//! |--------------------|----------------|
//! | `WIFI_SSID`        | `mqttsn`       |
//! | `WIFI_PASSWORD`    | (empty: open)  |
//! | `MQTTSN_GATEWAY`   | `192.168.1.10` |
//! | `MQTTSN_PORT`      | `1884`         |
//! | `MQTTSN_CLIENT_ID` | `esp32c3-1`    |
//! | `MQTTSN_PERIOD_S`  | `60`           |
//!
//! `WIFI_SSID=home WIFI_PASSWORD=secret MQTTSN_GATEWAY=192.168.1.20 cargo run --release`
//! builds, flashes (espflash) and monitors.
#![no_std]
#![no_main]

use core::fmt::Write as _;
use core::net::Ipv4Addr;

use embassy_executor::Spawner;
use embassy_net::udp::{PacketMetadata, UdpSocket};
use embassy_net::{IpEndpoint, Runner, Stack, StackResources};
use embassy_time::{Duration, Timer};
use esp_backtrace as _;
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use esp_hal::tsens::{self, TemperatureSensor};
use esp_println::println;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config, ControllerConfig, Interface, WifiController,
};
use mqttsn_client::embassy_udp::{EmbassyClient, Message, UdpError};
use mqttsn_client::{Client, QoS, Settings, Topic, TopicFilter};
use static_cell::StaticCell;

esp_bootloader_esp_idf::esp_app_desc!();

const SSID: &str = env_or(option_env!("WIFI_SSID"), "mqttsn");
const PASSWORD: &str = env_or(option_env!("WIFI_PASSWORD"), "");
const GATEWAY: &str = env_or(option_env!("MQTTSN_GATEWAY"), "192.168.1.10");
const PORT: &str = env_or(option_env!("MQTTSN_PORT"), "1884");
const CLIENT_ID: &str = env_or(option_env!("MQTTSN_CLIENT_ID"), "esp32c3-1");
const PERIOD_S: &str = env_or(option_env!("MQTTSN_PERIOD_S"), "60");

/// How long each call waits for the gateway's answer (retransmissions
/// included: Tretry 2 s, Nretry 3).
const WAIT: Duration = Duration::from_secs(10);
/// The keepalive while connected, in seconds.
const KEEPALIVE_S: u16 = 120;

const fn env_or(value: Option<&'static str>, default: &'static str) -> &'static str {
    match value {
        Some(v) => v,
        None => default,
    }
}

/// The client: 4 topic names, 2 requests in flight, datagrams of up to 128
/// octets (about 1.2 KiB in all).
type Sensor<'d, H> = EmbassyClient<'d, H, 4, 2, 128>;

/// Text in a fixed buffer: topic names and readings without allocation.
struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    fn new() -> Self {
        Self { buf: [0; N], len: 0 }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> core::fmt::Write for Text<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default());
    // The Wi-Fi driver allocates; the MQTT-SN client does not.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 36 * 1024);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    let station = Config::Station(
        StationConfig::default()
            .with_ssid(SSID.try_into().expect("SSID of at most 32 octets"))
            .with_authentication(if PASSWORD.is_empty() {
                AuthenticationMethodConfig::Open
            } else {
                AuthenticationMethodConfig::Wpa2Personal(
                    PASSWORD.try_into().expect("password of at most 64 octets"),
                )
            }),
    );
    let controller = WifiController::new(
        peripherals.WIFI,
        ControllerConfig::default().with_initial_config(station),
    )
    .expect("Wi-Fi initialised");
    let interface = Interface::station();

    let rng = Rng::new();
    let seed = u64::from(rng.random()) << 32 | u64::from(rng.random());
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        interface,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        seed,
    );
    spawner.spawn(wifi_task(controller).expect("one Wi-Fi task"));
    spawner.spawn(net_task(runner).expect("one network task"));

    let temperature = TemperatureSensor::new(peripherals.TSENS, tsens::Config::default())
        .expect("temperature sensor");
    sensor(stack, &temperature).await
}

/// Keeps the station associated: connects, and reconnects after a loss.
#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) {
    loop {
        match controller.connect_async().await {
            Ok(info) => {
                println!("wifi: associated with {}", info.ssid.as_str());
                let _ = controller.wait_for_disconnect_async().await;
                println!("wifi: disconnected");
            }
            Err(e) => println!("wifi: connect failed: {e:?}"),
        }
        Timer::after(Duration::from_secs(5)).await;
    }
}

/// Runs the IP stack.
#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Interface>) {
    runner.run().await
}

/// The sensor loop: (re)connect, then publish and sleep, for ever.
async fn sensor(stack: Stack<'static>, temperature: &TemperatureSensor<'_>) -> ! {
    let gateway = IpEndpoint::new(
        GATEWAY.parse::<Ipv4Addr>().expect("MQTTSN_GATEWAY is an IPv4 address").into(),
        PORT.parse().expect("MQTTSN_PORT is a port number"),
    );
    let period = Duration::from_secs(PERIOD_S.parse().expect("MQTTSN_PERIOD_S is a number"));
    let sleep_s = u16::try_from(PERIOD_S.parse::<u64>().unwrap_or(60) * 2).unwrap_or(u16::MAX);

    println!("net: waiting for DHCP");
    stack.wait_config_up().await;
    if let Some(config) = stack.config_v4() {
        println!("net: address {}", config.address);
    }

    let mut rx_meta = [PacketMetadata::EMPTY; 4];
    let mut rx_buffer = [0; 512];
    let mut tx_meta = [PacketMetadata::EMPTY; 4];
    let mut tx_buffer = [0; 512];
    let socket = UdpSocket::new(stack, &mut rx_meta, &mut rx_buffer, &mut tx_meta, &mut tx_buffer);

    let settings = Settings { retry_ms: 2_000, max_retries: 3, ..Settings::default() };
    let client = Client::new(CLIENT_ID.as_bytes(), settings).expect("ClientId of 1 to 64 octets");
    let on_message = |m: Message<'_>| {
        println!(
            "mqtt-sn: message on {}: {:?}",
            m.topic_str().unwrap_or("(predefined)"),
            core::str::from_utf8(m.payload).unwrap_or("(binary)")
        );
    };
    let mut mq: Sensor<'_, _> =
        EmbassyClient::new(socket, gateway, client, on_message).expect("socket bound");

    let mut reading_topic = Text::<64>::new();
    let _ = write!(reading_topic, "sensors/{CLIENT_ID}/temperature");
    let mut command_topic = Text::<64>::new();
    let _ = write!(command_topic, "sensors/{CLIENT_ID}/cmd");

    loop {
        if let Err(e) = session(
            &mut mq,
            reading_topic.as_str(),
            command_topic.as_str(),
            temperature,
            period,
            sleep_s,
        )
        .await
        {
            println!("mqtt-sn: {e}; starting again in 10 s");
            Timer::after(Duration::from_secs(10)).await;
        }
    }
}

/// One session: CONNECT (keeping the session the gateway holds),
/// SUBSCRIBE to the command topic, then the sleep cycle until an error.
async fn session<H: FnMut(Message<'_>)>(
    mq: &mut Sensor<'_, H>,
    reading_topic: &str,
    command_topic: &str,
    temperature: &TemperatureSensor<'_>,
    period: Duration,
    sleep_s: u16,
) -> Result<(), UdpError> {
    println!("mqtt-sn: connecting to {} as {CLIENT_ID}", mq.gateway());
    mq.connect(false, KEEPALIVE_S, None, WAIT).await?;
    mq.subscribe(TopicFilter::Name(command_topic.as_bytes()), QoS::AtLeastOnce, WAIT).await?;
    let topic_id = mq.register(reading_topic, WAIT).await?;
    loop {
        let mut reading = Text::<16>::new();
        let _ = write!(reading, "{:.1}", temperature.get_temperature().to_celsius());
        mq.publish(Topic::Id(topic_id), reading.as_str().as_bytes(), QoS::AtLeastOnce, false, WAIT)
            .await?;
        println!("mqtt-sn: published {} = {}", reading_topic, reading.as_str());

        // Asleep: the gateway keeps the session and buffers for us.
        mq.sleep(sleep_s, WAIT).await?;
        Timer::after(period).await;
        // Awake for a moment: buffered messages go to the callback, then
        // PINGRESP and asleep again.
        let buffered = mq.wake(WAIT).await?;
        if buffered > 0 {
            println!("mqtt-sn: {buffered} buffered message(s)");
        }
        // Active again for the next reading.
        mq.connect(false, KEEPALIVE_S, None, WAIT).await?;
    }
}
