# Packet and state logic of umqttsn with a fake transport: runs under real
# MicroPython (the WebAssembly port, see run_wasm.mjs) and under CPython.
import umqttsn as m

try:
    import ustruct as struct
except ImportError:
    import struct


class FakeGateway:
    """A scripted gateway: answers what the client sends; can drop answers."""

    def __init__(self):
        self.sent = []
        self.inbox = []
        self.drop = 0
        self.topics = {}

    # socket API used by the client
    def settimeout(self, t):
        pass

    def sendto(self, data, addr):
        self.sent.append(bytes(data))
        if self.drop:
            self.drop -= 1
            return
        t, body = m.parse(data)
        if t == m.CONNECT:
            if body[0] & 0x08:
                self.inbox.append(m.packet(m.WILLTOPICREQ))
            else:
                self.inbox.append(m.packet(m.CONNACK, b"\x00"))
        elif t == m.WILLTOPIC:
            self.inbox.append(m.packet(m.WILLMSGREQ))
        elif t == m.WILLMSG:
            self.inbox.append(m.packet(m.CONNACK, b"\x00"))
        elif t == m.REGISTER:
            mid = struct.unpack("!H", body[2:4])[0]
            tid = len(self.topics) + 1
            self.topics[bytes(body[4:])] = tid
            self.inbox.append(m.packet(m.REGACK, struct.pack("!HHB", tid, mid, 0)))
        elif t == m.PUBLISH:
            flags, tid, mid = struct.unpack("!BHH", body[:5])
            qos = (flags >> 5) & 3
            if qos == 1:
                self.inbox.append(m.packet(m.PUBACK, struct.pack("!HHB", tid, mid, 0)))
            elif qos == 2:
                self.inbox.append(m.packet(m.PUBREC, struct.pack("!H", mid)))
        elif t == m.PUBREL:
            self.inbox.append(m.packet(m.PUBCOMP, body[:2]))
        elif t == m.SUBSCRIBE:
            flags, mid = struct.unpack("!BH", body[:3])
            self.inbox.append(m.packet(m.SUBACK, struct.pack("!BHHB", flags & 0x60, 9, mid, 0)))
        elif t == m.UNSUBSCRIBE:
            self.inbox.append(m.packet(m.UNSUBACK, body[1:3]))
        elif t == m.PINGREQ:
            self.inbox.append(m.packet(m.PINGRESP))
        elif t == m.DISCONNECT:
            self.inbox.append(m.packet(m.DISCONNECT))

    def recv(self, n):
        if not self.inbox:
            raise OSError(11)
        return self.inbox.pop(0)

    def close(self):
        pass

    def types(self):
        return [m.parse(d)[0] for d in self.sent]


def client(gw):
    return m.MQTTSNClient("node-1", "gw", sock=gw, retry=0.05, retries=2)


def test_connect_with_will():
    gw = FakeGateway()
    c = client(gw)
    c.set_last_will("will/t", "gone", retain=True, qos=1)
    c.connect()
    assert gw.types() == [m.CONNECT, m.WILLTOPIC, m.WILLMSG], gw.types()
    t, body = m.parse(gw.sent[1])
    assert body[0] == 0x20 | 0x10 and bytes(body[1:]) == b"will/t"


def test_publish_every_qos_with_automatic_register():
    gw = FakeGateway()
    c = client(gw)
    c.connect()
    for qos in (0, 1, 2):
        c.publish("room/temp", "21.5", qos=qos)
    assert gw.types().count(m.REGISTER) == 1, "registered once"
    assert gw.types()[-2:] == [m.PUBLISH, m.PUBREL]
    c.publish(7, b"pre", qos=-1)
    c.publish("ab", b"short", qos=1)
    t, body = m.parse(gw.sent[-1])
    assert body[0] & 3 == 2 and bytes(body[1:3]) == b"ab"


def test_qos_minus_one_refuses_names():
    c = client(FakeGateway())
    try:
        c.publish("a/long/name", b"x", qos=-1)
    except m.MQTTSNException:
        return
    raise AssertionError("QoS -1 to a name must fail")


def test_lost_puback_is_retried_with_dup():
    gw = FakeGateway()
    c = client(gw)
    c.connect()
    c.publish(5, b"x", qos=1)
    gw.drop = 1
    c.publish(5, b"y", qos=1)
    pubs = [d for d in gw.sent if m.parse(d)[0] == m.PUBLISH]
    assert pubs[-1][2] & 0x80 and not pubs[-2][2] & 0x80, "DUP only on the retry"


def test_messages_register_unknown_ids_and_qos2_once():
    gw = FakeGateway()
    got = []
    c = client(gw)
    c.set_callback(lambda topic, msg: got.append((topic, bytes(msg))))
    c.connect()
    c.subscribe("room/#", qos=2)
    gw.inbox.append(m.packet(m.REGISTER, struct.pack("!HH", 4, 1) + b"room/1"))
    gw.inbox.append(m.packet(m.PUBLISH, struct.pack("!BHH", 0x40, 4, 2) + b"v"))
    gw.inbox.append(m.packet(m.PUBLISH, struct.pack("!BHH", 0xC0, 4, 2) + b"v"))
    gw.inbox.append(m.packet(m.PUBLISH, struct.pack("!BHH", 0x20, 99, 3) + b"?"))
    for _ in range(4):
        c.wait_msg(0)
    assert got == [(b"room/1", b"v")], got
    t, body = m.parse(gw.sent[-1])
    assert t == m.PUBACK and body[4] == 2, "unknown topic id refused"


def test_sleep_and_wake():
    gw = FakeGateway()
    got = []
    c = client(gw)
    c.set_callback(lambda topic, msg: got.append(bytes(msg)))
    c.connect(clean_session=False)
    c.sleep(600)
    t, body = m.parse(gw.sent[-1])
    assert t == m.DISCONNECT and struct.unpack("!H", body)[0] == 600
    # Buffered messages arrive before PINGRESP.
    gw.inbox.append(m.packet(m.PUBLISH, struct.pack("!BHH", 0x02, struct.unpack("!H", b"ab")[0], 0) + b"b1"))
    orig = gw.sendto

    def sendto(data, addr):
        if m.parse(data)[0] == m.PINGREQ:
            gw.sent.append(bytes(data))
            gw.inbox.append(m.packet(m.PINGRESP))
            return
        orig(data, addr)

    gw.sendto = sendto
    c.wake()
    assert got == [b"b1"], got
    t, body = m.parse(gw.sent[-1])
    assert t == m.PINGREQ and bytes(body) == b"node-1"


def test_short_datagrams_do_not_crash_the_client():
    gw = FakeGateway()
    c = client(gw)
    c.connect()
    for bad in (m.packet(m.PUBLISH, b"\x00"), m.packet(m.REGISTER, b""), m.packet(m.PUBREL)):
        gw.inbox.append(bad)
        c.wait_msg(0)
    c.ping()


def test_malformed_datagrams_are_ignored():
    assert m.parse(b"") is None
    assert m.parse(b"\x05\x0e\x00") is None
    assert m.parse(b"\x01\x00") is None
    assert m.parse(m.packet(m.PINGRESP)) == (m.PINGRESP, b"")
    long = m.packet(m.PUBLISH, b"x" * 300)
    assert long[0] == 1 and m.parse(long)[0] == m.PUBLISH


def run():
    names = [n for n in sorted(globals()) if n.startswith("test_")]
    for n in names:
        globals()[n]()
        print("ok", n)
    print("OK", len(names), "tests")


if __name__ == "__main__":
    run()
