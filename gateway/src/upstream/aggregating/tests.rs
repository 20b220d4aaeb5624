//! The pool with virtual time: sessions' commands in, the broker's packets
//! played by the test on the pool's transports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::mqtt::codec::{self, MqttPacket, PublishPacket};
use crate::upstream::connection::UpstreamOptions;

const MS: Duration = Duration::from_millis(1);

struct T {
    u: Aggregating,
    now: Instant,
    /// Open transports, by pool connection index (the ClientId's end).
    conns: HashMap<usize, ConnId>,
    /// The transport of the gateway's own connection.
    own: Option<ConnId>,
    /// ClientIds by transport.
    ids: HashMap<ConnId, String>,
}

fn opts(n: usize) -> PoolOptions {
    PoolOptions {
        connections: n,
        client_id: "gw".into(),
        worker: 0,
        keep_alive: 60,
        username: Some("gateway".into()),
        password: None,
        own_client_id: "own".into(),
        max_offline: 3,
    }
}

fn spec(id: &str, clean: bool, will: Option<Will>) -> Box<ConnectSpec> {
    Box::new(ConnectSpec {
        client_id: id.into(),
        clean_session: clean,
        keep_alive: 30,
        will,
        username: Some("sensor-user".into()),
        password: None,
        client_cert: None,
    })
}

impl T {
    fn new(n: usize) -> Self {
        let inner = Transparent::new(UpstreamOptions::default(), "mqtt://broker".into(), 7);
        Self {
            u: Aggregating::new(opts(n), inner).with_metrics(Arc::new(Metrics::default())),
            now: Instant::now(),
            conns: HashMap::new(),
            own: None,
            ids: HashMap::new(),
        }
    }

    fn cmd(&mut self, key: UpstreamKey, cmd: Command) {
        self.u.handle_command(key, cmd, self.now);
        self.transports();
    }

    /// Opens what the pool asks for; answers CONNECTs with CONNACK.
    fn transports(&mut self) {
        while let Some(io) = self.u.poll_io() {
            if let Io::Open { conn, .. } = io {
                self.u.handle_opened(conn, self.now);
            }
        }
    }

    /// Everything written, by transport; CONNECTs are answered (accepted,
    /// with `present`) and recorded.
    fn written_with(&mut self, present: bool) -> Vec<(ConnId, MqttPacket)> {
        let mut out = Vec::new();
        loop {
            self.due();
            self.transports();
            let mut any = false;
            while let Some((conn, mut b)) = self.u.poll_transmit() {
                any = true;
                while let Some(p) = codec::decode(&mut b, 1 << 20).unwrap() {
                    if let MqttPacket::Connect(c) = &p {
                        self.ids.insert(conn, c.client_id.clone());
                        if c.client_id == "own" {
                            self.own = Some(conn);
                        } else {
                            let i: usize = c.client_id.rsplit('-').next().unwrap().parse().unwrap();
                            self.conns.insert(i, conn);
                        }
                        self.feed(conn, MqttPacket::ConnAck { session_present: present, code: 0 });
                    }
                    out.push((conn, p));
                }
            }
            if !any {
                return out;
            }
        }
    }

    fn written(&mut self) -> Vec<(ConnId, MqttPacket)> {
        self.written_with(true)
    }

    fn feed(&mut self, conn: ConnId, p: MqttPacket) {
        let mut b = BytesMut::new();
        p.encode(&mut b);
        self.u.handle_received(conn, &mut b, self.now);
    }

    /// As a driver does once a step's outputs have moved: the timeouts
    /// that are due.
    fn due(&mut self) {
        if self.u.poll_timeout().is_some_and(|t| t <= self.now) {
            self.u.handle_timeout(self.now);
        }
    }

    fn events(&mut self) -> Vec<(UpstreamKey, Event)> {
        let mut out: Vec<_> = std::iter::from_fn(|| self.u.poll_event()).collect();
        self.due();
        out.extend(std::iter::from_fn(|| self.u.poll_event()));
        out
    }

    /// Connects sensor `key` as `id` and returns what it was told.
    fn connect(&mut self, key: UpstreamKey, id: &str, clean: bool) -> Vec<(UpstreamKey, Event)> {
        self.cmd(key, Command::Connect(spec(id, clean, None)));
        self.written();
        self.events()
    }

    fn subscribe(
        &mut self,
        key: UpstreamKey,
        id: RequestId,
        filter: &str,
        qos: QoS,
    ) -> (ConnId, u16) {
        self.cmd(key, Command::Subscribe { id, filter: filter.into(), qos });
        let w = self.written();
        let subs: Vec<_> = w
            .into_iter()
            .filter_map(|(c, p)| match p {
                MqttPacket::Subscribe { pkid, filters } => {
                    assert_eq!(filters, vec![(filter.to_string(), filters[0].1)]);
                    Some((c, pkid))
                }
                _ => None,
            })
            .collect();
        assert_eq!(subs.len(), 1, "one SUBSCRIBE upstream per sensor SUBSCRIBE");
        subs[0]
    }

    fn message(&mut self, conn: ConnId, topic: &str, qos: QoS, pkid: u16, retain: bool) {
        self.feed(
            conn,
            MqttPacket::Publish(PublishPacket {
                dup: false,
                qos,
                retain,
                topic: Arc::from(topic),
                pkid,
                payload: Bytes::from_static(b"m"),
            }),
        );
    }
}

fn messages(events: &[(UpstreamKey, Event)]) -> Vec<(UpstreamKey, Option<DeliveryId>, QoS, bool)> {
    events
        .iter()
        .filter_map(|(k, e)| match e {
            Event::Message { delivery, qos, retain, .. } => Some((*k, *delivery, *qos, *retain)),
            _ => None,
        })
        .collect()
}

#[test]
fn sensors_share_one_connection_with_the_gateways_identity() {
    let mut t = T::new(1);
    assert_eq!(t.connect(1, "s1", true), vec![(1, Event::Connected { session_present: false })]);
    assert_eq!(t.connect(2, "s2", true), vec![(2, Event::Connected { session_present: false })]);
    assert_eq!(t.ids.len(), 1, "one broker connection for both");
    let id = t.ids.values().next().unwrap();
    assert_eq!(id, "gw-0-0");
    assert_eq!(t.u.open_count(), 2);
}

#[test]
fn the_connect_waits_for_the_pool_and_fails_with_it() {
    let mut t = T::new(1);
    t.cmd(1, Command::Connect(spec("s1", true, None)));
    assert!(t.events().is_empty(), "no CONNACK from the broker yet");
    // The transport fails: the waiting session hears it.
    t.u.handle_closed(1, "refused", t.now);
    let ev = t.events();
    assert!(matches!(ev.as_slice(), [(1, Event::Unavailable { .. })]), "{ev:?}");
    // While it is down, a session that connects is told at once.
    t.cmd(2, Command::Connect(spec("s2", true, None)));
    let ev = t.events();
    assert!(matches!(ev.as_slice(), [(2, Event::Unavailable { .. })]), "{ev:?}");
}

#[test]
fn publishes_keep_their_request_ids_and_acks() {
    let mut t = T::new(1);
    t.connect(1, "s1", true);
    t.connect(2, "s2", true);
    let topic: Arc<str> = Arc::from("t");
    for (key, id, qos) in [(1, 7, QoS::AtLeastOnce), (2, 7, QoS::ExactlyOnce)] {
        let payload = Bytes::from_static(b"x");
        t.cmd(key, Command::Publish { id, topic: topic.clone(), payload, qos, retain: false });
    }
    let w = t.written();
    let pkids: Vec<(u16, QoS)> = w
        .iter()
        .filter_map(|(_, p)| match p {
            MqttPacket::Publish(p) => Some((p.pkid, p.qos)),
            _ => None,
        })
        .collect();
    assert_eq!(pkids.len(), 2);
    assert_ne!(pkids[0].0, pkids[1].0, "distinct packet ids on the shared connection");
    let conn = t.conns[&0];
    t.feed(conn, MqttPacket::PubAck(pkids[0].0));
    t.feed(conn, MqttPacket::PubRec(pkids[1].0));
    assert_eq!(
        t.events(),
        vec![(1, Event::PublishAcked { id: 7 }), (2, Event::PublishAcked { id: 7 })]
    );
    t.cmd(2, Command::Release { id: 7 });
    let w = t.written();
    assert!(w.iter().any(|(_, p)| *p == MqttPacket::PubRel(pkids[1].0)), "{w:?}");
    t.feed(conn, MqttPacket::PubComp(pkids[1].0));
    assert_eq!(t.events(), vec![(2, Event::PublishCompleted { id: 7 })]);
}

#[test]
fn subscriptions_are_counted_and_the_last_unsubscribes_upstream() {
    let mut t = T::new(1);
    t.connect(1, "s1", true);
    t.connect(2, "s2", true);
    let (conn, p1) = t.subscribe(1, 10, "a/+", QoS::AtLeastOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p1, codes: vec![1] });
    let (_, p2) = t.subscribe(2, 20, "a/+", QoS::AtMostOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p2, codes: vec![1] });
    assert_eq!(
        t.events(),
        vec![
            (1, Event::SubAcked { id: 10, granted: Some(QoS::AtLeastOnce) }),
            (2, Event::SubAcked { id: 20, granted: Some(QoS::AtMostOnce) }),
        ]
    );
    assert_eq!(t.u.stats().filters, 1);
    assert_eq!(t.u.stats().subscriptions, 2);
    // The first to leave is answered at once; nothing goes upstream.
    t.cmd(1, Command::Unsubscribe { id: 11, filter: "a/+".into() });
    assert!(t.written().is_empty());
    assert_eq!(t.events(), vec![(1, Event::UnsubAcked { id: 11 })]);
    // The last unsubscribes upstream and is answered at the UNSUBACK.
    t.cmd(2, Command::Unsubscribe { id: 21, filter: "a/+".into() });
    let w = t.written();
    let pkid = match w.as_slice() {
        [(_, MqttPacket::Unsubscribe { pkid, filters })] if filters == &["a/+".to_string()] => {
            *pkid
        }
        other => panic!("{other:?}"),
    };
    assert!(t.events().is_empty());
    t.feed(conn, MqttPacket::UnsubAck(pkid));
    assert_eq!(t.events(), vec![(2, Event::UnsubAcked { id: 21 })]);
    assert_eq!(t.u.stats().filters, 0);
}

#[test]
fn a_message_fans_out_once_per_sensor_at_its_qos_and_is_acked_when_all_took_it() {
    let mut t = T::new(1);
    for (key, id) in [(1, "s1"), (2, "s2"), (3, "s3")] {
        t.connect(key, id, true);
    }
    let (conn, p) = t.subscribe(1, 1, "a/#", QoS::AtLeastOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    // Two overlapping filters of one sensor: one copy, at the higher QoS.
    let (_, p) = t.subscribe(1, 2, "a/b", QoS::AtMostOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    let (_, p) = t.subscribe(2, 1, "a/b", QoS::AtMostOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    t.events();
    t.message(conn, "a/b", QoS::AtLeastOnce, 900, false);
    let ev = t.events();
    let m = messages(&ev);
    assert_eq!(m.len(), 2, "{ev:?}");
    let one = m.iter().find(|x| x.0 == 1).unwrap();
    let two = m.iter().find(|x| x.0 == 2).unwrap();
    assert_eq!((one.2, two.2), (QoS::AtLeastOnce, QoS::AtMostOnce));
    assert!(two.1.is_none(), "a QoS 0 copy needs no acknowledgement");
    assert!(t.written().is_empty(), "not acknowledged before the session took it");
    t.cmd(1, Command::Ack(one.1.unwrap()));
    assert_eq!(t.written(), vec![(conn, MqttPacket::PubAck(900))]);
    // A topic nobody holds: acknowledged at once, delivered to nobody.
    t.message(conn, "b", QoS::AtLeastOnce, 901, false);
    assert!(messages(&t.events()).is_empty());
    assert_eq!(t.written(), vec![(conn, MqttPacket::PubAck(901))]);
}

#[test]
fn a_slow_sensor_does_not_hold_up_the_others() {
    let mut t = T::new(1);
    t.connect(1, "slow", true);
    t.connect(2, "quick", true);
    let (conn, p) = t.subscribe(1, 1, "x", QoS::AtLeastOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    let (_, p) = t.subscribe(2, 1, "y", QoS::AtLeastOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    t.events();
    t.message(conn, "x", QoS::AtLeastOnce, 1, false);
    t.message(conn, "y", QoS::AtLeastOnce, 2, false);
    let m = messages(&t.events());
    // The sessions acknowledge on receipt (`ack_on_receipt`): both at once.
    for (key, d, ..) in &m {
        t.cmd(*key, Command::Ack(d.unwrap()));
    }
    let w = t.written();
    assert_eq!(w, vec![(conn, MqttPacket::PubAck(1)), (conn, MqttPacket::PubAck(2))]);
}

#[test]
fn granted_qos_and_refusals_are_per_sensor() {
    let mut t = T::new(1);
    t.connect(1, "s1", true);
    t.connect(2, "s2", true);
    let (conn, p) = t.subscribe(1, 1, "q", QoS::ExactlyOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    assert_eq!(t.events(), vec![(1, Event::SubAcked { id: 1, granted: Some(QoS::AtLeastOnce) })]);
    let (_, p) = t.subscribe(2, 1, "secret", QoS::AtLeastOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![0x80] });
    assert_eq!(t.events(), vec![(2, Event::SubAcked { id: 1, granted: None })]);
    // The refused filter is not held: the last holder left, so it is
    // unsubscribed upstream too.
    let w = t.written();
    assert!(matches!(w.as_slice(), [(_, MqttPacket::Unsubscribe { .. })]), "{w:?}");
    assert_eq!(t.u.stats().filters, 1);
}

#[test]
fn retained_messages_go_only_to_the_sensor_that_subscribed() {
    let mut t = T::new(1);
    t.connect(1, "old", true);
    t.connect(2, "new", true);
    let (conn, p) = t.subscribe(1, 1, "r/#", QoS::AtLeastOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    t.now += RETAINED_WINDOW + MS;
    // The second sensor subscribes to the same filter: it goes upstream
    // again so that the broker sends the retained messages again.
    let (_, p) = t.subscribe(2, 1, "r/#", QoS::AtLeastOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    t.events();
    t.message(conn, "r/1", QoS::AtLeastOnce, 5, true);
    let m = messages(&t.events());
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!((m[0].0, m[0].3), (2, true));
    // A live message (RETAIN clear) reaches both.
    t.message(conn, "r/1", QoS::AtMostOnce, 0, false);
    assert_eq!(messages(&t.events()).len(), 2);
    // After the window, a retained copy goes to nobody.
    t.now += RETAINED_WINDOW + MS;
    t.message(conn, "r/2", QoS::AtMostOnce, 0, true);
    assert!(messages(&t.events()).is_empty());
}

#[test]
fn the_will_is_published_when_the_sensor_is_lost_and_never_after_disconnect() {
    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
    };
    let mut t = T::new(1);
    t.cmd(1, Command::Connect(spec("lost", true, Some(will("w/lost")))));
    t.cmd(2, Command::Connect(spec("clean", true, Some(will("w/clean")))));
    t.written();
    t.events();
    t.cmd(2, Command::Disconnect);
    assert!(t.written().is_empty(), "no will after a clean DISCONNECT");
    assert_eq!(t.events(), vec![(2, Event::Closed)]);
    // A will update replaces it.
    t.cmd(1, Command::Connect(spec("lost", true, Some(will("w/updated")))));
    t.events();
    t.cmd(1, Command::Abort);
    let w = t.written();
    match w.as_slice() {
        [(_, MqttPacket::Publish(p))] => {
            assert_eq!((&*p.topic, p.qos, p.retain), ("w/updated", QoS::AtLeastOnce, true));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.events(), vec![(1, Event::Closed)]);
    assert_eq!(t.u.wills_published(), 1);
    assert_eq!(t.u.open_count(), 0);
}

#[test]
fn a_persistent_sensor_keeps_its_subscriptions_and_messages_while_away() {
    let mut t = T::new(1);
    t.connect(1, "p", false);
    let (conn, p) = t.subscribe(1, 1, "p/#", QoS::AtLeastOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    t.cmd(1, Command::Disconnect);
    t.events();
    for i in 0..5u16 {
        t.message(conn, "p/x", QoS::AtLeastOnce, 100 + i, false);
    }
    // Taken at once (bounded at 3 here: the oldest are dropped).
    assert_eq!(t.written().len(), 5);
    assert_eq!(t.u.stats().offline_messages, 3);
    assert_eq!(t.u.offline_dropped(), 2);
    let ev = t.connect(2, "p", false);
    assert_eq!(ev[0], (2, Event::Connected { session_present: true }));
    let m = messages(&ev);
    assert_eq!(m.len(), 3);
    assert!(m.iter().all(|x| x.1.is_none() && x.2 == QoS::AtLeastOnce));
    // A clean start forgets the subscriptions, upstream too.
    t.cmd(2, Command::Connect(spec("p", true, None)));
    let w = t.written();
    assert!(w.iter().any(|(_, p)| matches!(p, MqttPacket::Unsubscribe { .. })), "{w:?}");
    assert_eq!(t.events(), vec![(2, Event::Connected { session_present: false })]);
}

#[test]
fn a_lost_broker_session_is_subscribed_again() {
    let mut t = T::new(1);
    t.connect(1, "s", true);
    let (conn, p) = t.subscribe(1, 1, "k", QoS::AtLeastOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    t.events();
    t.u.handle_closed(conn, "broker restarted", t.now);
    t.now += Duration::from_secs(60);
    t.u.handle_timeout(t.now);
    let w = t.written_with(false);
    assert!(
        w.iter().any(
            |(_, p)| matches!(p, MqttPacket::Subscribe { filters, .. } if filters[0].0 == "k")
        ),
        "{w:?}"
    );
    // The sessions are not asked to do anything.
    assert!(t.events().iter().all(|(_, e)| !matches!(e, Event::Connected { .. })));
}

#[test]
fn what_the_broker_sends_with_its_connack_waits_for_the_sessions_to_subscribe_again() {
    let mut t = T::new(1);
    t.cmd(1, Command::Connect(spec("p", false, None)));
    t.transports();
    // The pool's CONNECT, answered with the CONNACK and, in the same read,
    // a message the broker kept for the pool while the gateway restarted.
    let (conn, _) = t.u.poll_transmit().unwrap();
    let mut b = BytesMut::new();
    MqttPacket::ConnAck { session_present: true, code: 0 }.encode(&mut b);
    MqttPacket::Publish(PublishPacket {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Arc::from("kept/1"),
        pkid: 77,
        payload: Bytes::from_static(b"k"),
    })
    .encode(&mut b);
    t.u.handle_received(conn, &mut b, t.now);
    // The session hears it is connected (without a session here) and
    // subscribes again before the message is fanned out.
    let ev: Vec<_> = std::iter::from_fn(|| t.u.poll_event()).collect();
    assert_eq!(ev, vec![(1, Event::Connected { session_present: false })]);
    t.u.handle_command(
        1,
        Command::Subscribe { id: 1, filter: "kept/#".into(), qos: QoS::AtLeastOnce },
        t.now,
    );
    assert_eq!(t.u.poll_timeout(), Some(t.now));
    t.u.handle_timeout(t.now);
    let m = messages(&std::iter::from_fn(|| t.u.poll_event()).collect::<Vec<_>>());
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].0, 1);
}

#[test]
fn the_gateways_own_connection_is_not_pooled() {
    let mut t = T::new(1);
    t.cmd(100, Command::Connect(spec("own", true, None)));
    t.written();
    assert!(t.own.is_some());
    assert_eq!(t.events(), vec![(100, Event::Connected { session_present: true })]);
    assert!(t.conns.is_empty(), "no pool connection for it");
}

#[test]
fn clientids_and_filters_spread_over_the_pool() {
    let mut t = T::new(4);
    for k in 0..40u64 {
        t.connect(k + 1, &format!("sensor-{k}"), true);
    }
    assert_eq!(t.conns.len(), 4, "every connection used");
    assert_eq!(t.u.stats().connections, 4);
    assert_eq!(t.u.stats().connected, 4);
}

#[test]
fn a_restored_qos2_publish_completes() {
    let mut t = T::new(1);
    let restored = |id, stage| crate::upstream::RestoredPublish {
        id,
        topic: Arc::from("q2"),
        payload: Bytes::from_static(b"x"),
        retain: false,
        stage,
    };
    t.cmd(
        1,
        Command::Restore {
            publishes: vec![
                restored(1, RestoredStage::Sent),
                restored(2, RestoredStage::Recorded),
                restored(3, RestoredStage::Released),
            ],
            qos2_received: vec![],
        },
    );
    t.cmd(1, Command::Connect(spec("r", false, None)));
    let w = t.written();
    let pk: Vec<u16> = w
        .iter()
        .filter_map(|(_, p)| match p {
            MqttPacket::Publish(p) => Some(p.pkid),
            _ => None,
        })
        .collect();
    assert_eq!(pk.len(), 1, "only the one the broker may not have: {w:?}");
    let ev = t.events();
    assert!(ev.contains(&(1, Event::PublishCompleted { id: 3 })), "{ev:?}");
    // The recorded one was released by the connection's start: complete
    // when the session releases it.
    t.cmd(1, Command::Release { id: 2 });
    assert!(t.written().is_empty());
    assert_eq!(t.events(), vec![(1, Event::PublishCompleted { id: 2 })]);
    let conn = t.conns[&0];
    t.feed(conn, MqttPacket::PubRec(pk[0]));
    assert_eq!(t.events(), vec![(1, Event::PublishAcked { id: 1 })]);
    t.cmd(1, Command::Release { id: 1 });
    assert_eq!(t.written(), vec![(conn, MqttPacket::PubRel(pk[0]))]);
    t.feed(conn, MqttPacket::PubComp(pk[0]));
    assert_eq!(t.events(), vec![(1, Event::PublishCompleted { id: 1 })]);
}

#[test]
fn a_new_run_releases_what_the_broker_kept_from_the_last() {
    let mut t = T::new(1);
    t.cmd(1, Command::Connect(spec("s", true, None)));
    t.cmd(
        1,
        Command::Publish {
            id: 1,
            topic: Arc::from("x"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::ExactlyOnce,
            retain: false,
        },
    );
    // The broker kept the pool's session, with QoS 2 exchanges of the
    // previous run under packet identifiers nobody knows: every other one
    // is released before anything else goes out.
    let w = t.written_with(true);
    let rel = w.iter().filter(|(_, p)| matches!(p, MqttPacket::PubRel(_))).count();
    assert_eq!(rel, usize::from(u16::MAX) - 1, "all but the new publish's own");
    let first_publish = w.iter().position(|(_, p)| matches!(p, MqttPacket::Publish(_))).unwrap();
    assert_eq!(first_publish, w.len() - 1, "after the releases");
    // A reconnect within the run releases nothing again.
    let conn = t.conns[&0];
    t.u.handle_closed(conn, "lost", t.now);
    t.now += Duration::from_secs(60);
    t.u.handle_timeout(t.now);
    let w = t.written_with(true);
    assert!(!w.iter().any(|(_, p)| matches!(p, MqttPacket::PubRel(_))), "{w:?}");
    assert!(w.iter().any(|(_, p)| matches!(p, MqttPacket::Publish(p) if p.dup)), "{w:?}");
}

#[test]
fn the_gauges_follow_the_pool() {
    let m = Arc::new(Metrics::default());
    let inner = Transparent::new(UpstreamOptions::default(), "mqtt://broker".into(), 7);
    let mut t = T::new(1);
    t.u = Aggregating::new(opts(2), inner).with_metrics(m.clone());
    t.connect(1, "s", true);
    let (conn, p) = t.subscribe(1, 1, "g", QoS::AtLeastOnce);
    t.feed(conn, MqttPacket::SubAck { pkid: p, codes: vec![1] });
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&m.pool_connections), 2);
    assert_eq!(get(&m.pool_filters), 1);
    assert_eq!(get(&m.pool_subscriptions), 1);
    t.cmd(1, Command::Disconnect);
    t.written();
    assert_eq!(get(&m.pool_filters), 0);
    assert_eq!(get(&m.pool_subscriptions), 0);
}
