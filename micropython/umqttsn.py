# umqttsn: an MQTT-SN v1.2 client for MicroPython (LoPy, ESP32, ...), shaped
# like umqtt.simple. Topic names are registered automatically; predefined ids
# (int) and two-character short names are accepted; QoS -1 works for those.
try:
    import usocket as socket
except ImportError:
    try:
        import socket
    except ImportError:  # a port without sockets: bring your own transport
        socket = None
try:
    import ustruct as struct
except ImportError:
    import struct
try:
    import utime as time
except ImportError:
    import time

# Message types.
CONNECT = 0x04
CONNACK = 0x05
WILLTOPICREQ = 0x06
WILLTOPIC = 0x07
WILLMSGREQ = 0x08
WILLMSG = 0x09
REGISTER = 0x0A
REGACK = 0x0B
PUBLISH = 0x0C
PUBACK = 0x0D
PUBCOMP = 0x0E
PUBREC = 0x0F
PUBREL = 0x10
SUBSCRIBE = 0x12
SUBACK = 0x13
UNSUBSCRIBE = 0x14
UNSUBACK = 0x15
PINGREQ = 0x16
PINGRESP = 0x17
DISCONNECT = 0x18

_QOS = {0: 0x00, 1: 0x20, 2: 0x40, -1: 0x60}


def _ticks():
    try:
        return time.ticks_ms()
    except AttributeError:
        return int(time.time() * 1000)


def _diff(a, b):
    try:
        return time.ticks_diff(a, b)
    except AttributeError:
        return a - b


class MQTTSNException(Exception):
    pass


def packet(msg_type, body=b""):
    n = len(body) + 2
    if n <= 255:
        return bytes((n, msg_type)) + body
    return b"\x01" + struct.pack("!HB", n + 2, msg_type) + body


def parse(data):
    """(type, body) of one datagram, or None when malformed."""
    if len(data) < 2:
        return None
    if data[0] == 1:
        if len(data) < 4:
            return None
        n, t = struct.unpack("!HB", data[1:4])
        start = 4
    else:
        n, t, start = data[0], data[1], 2
    if n != len(data) or n < start:
        return None
    return t, data[start:]


class MQTTSNClient:
    def __init__(self, client_id, server, port=1884, keepalive=60, retry=3, retries=3, sock=None):
        if isinstance(client_id, str):
            client_id = client_id.encode()
        self.client_id = client_id
        if sock is None:
            # The address family follows the server: "::1" or a v6 name
            # needs an AF_INET6 socket.
            ai = socket.getaddrinfo(server, port)[0]
            self.af, self.addr = ai[0], ai[-1]
        else:
            self.af, self.addr = None, (server, port)
        self.keepalive = keepalive
        self.retry = retry
        self.retries = retries
        self.sock = sock
        self.cb = None
        self.will = None
        self.topics = {}
        self.names = {}
        self.msg_id = 0
        self.last = _ticks()
        self.qos2 = []

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.will = (topic, msg, retain, qos)

    def _send(self, data):
        self.sock.sendto(data, self.addr)
        self.last = _ticks()

    def _recv(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1500)
        except OSError:
            return None
        return parse(data)

    def _next_id(self):
        self.msg_id = self.msg_id % 0xFFFF + 1
        return self.msg_id

    def _request(self, data, want, match=None):
        """Send `data` (again, with DUP where it has one) until a packet of type `want`
        (and `match(body)`) arrives; other packets are handled on the way."""
        for attempt in range(self.retries + 1):
            if attempt and data[1] in (PUBLISH, SUBSCRIBE):
                data = data[:2] + bytes((data[2] | 0x80,)) + data[3:]
            self._send(data)
            start = _ticks()
            while _diff(_ticks(), start) < self.retry * 1000:
                left = self.retry - _diff(_ticks(), start) / 1000
                got = self._recv(max(left, 0.01))
                if got is None:
                    continue
                t, body = got
                try:
                    if t == want and (match is None or match(body)):
                        return body
                except (ValueError, IndexError):
                    continue
                self._safe(t, body)
        raise MQTTSNException("no answer from the gateway")

    def connect(self, clean_session=True):
        if self.sock is None:
            self.sock = socket.socket(self.af or socket.AF_INET, socket.SOCK_DGRAM)
        flags = (0x04 if clean_session else 0) | (0x08 if self.will else 0)
        data = packet(CONNECT, struct.pack("!BBH", flags, 1, self.keepalive) + self.client_id)
        for _ in range(self.retries + 1):
            self._send(data)
            while True:
                got = self._recv(self.retry)
                if got is None:
                    break
                t, body = got
                if t == WILLTOPICREQ:
                    topic, msg, retain, qos = self.will
                    f = _QOS[qos] | (0x10 if retain else 0)
                    self._send(packet(WILLTOPIC, bytes((f,)) + _b(topic)))
                elif t == WILLMSGREQ:
                    self._send(packet(WILLMSG, _b(self.will[1])))
                elif t == CONNACK:
                    if body[0] != 0:
                        raise MQTTSNException("CONNACK refused: %d" % body[0])
                    return False
        raise MQTTSNException("no CONNACK from the gateway")

    def disconnect(self):
        self._request(packet(DISCONNECT), DISCONNECT)
        self.sock.close()
        self.sock = None

    def ping(self):
        self._request(packet(PINGREQ), PINGRESP)

    def register(self, topic):
        topic = _b(topic)
        if topic in self.topics:
            return self.topics[topic]
        mid = self._next_id()
        body = self._request(
            packet(REGISTER, struct.pack("!HH", 0, mid) + topic),
            REGACK,
            lambda b: struct.unpack("!H", b[2:4])[0] == mid,
        )
        tid, _, rc = struct.unpack("!HHB", body)
        if rc:
            raise MQTTSNException("REGISTER refused: %d" % rc)
        self._learn(topic, tid)
        return tid

    def _learn(self, name, tid):
        self.topics[name] = tid
        self.names[tid] = name

    def _topic(self, topic, qos):
        if isinstance(topic, int):
            return 0x01, topic
        topic = _b(topic)
        if len(topic) == 2:
            return 0x02, struct.unpack("!H", topic)[0]
        if qos == -1:
            raise MQTTSNException("QoS -1 needs a predefined id or a short name")
        return 0x00, self.register(topic)

    def publish(self, topic, msg, retain=False, qos=0):
        kind, tid = self._topic(topic, qos)
        mid = self._next_id() if qos in (1, 2) else 0
        flags = _QOS[qos] | (0x10 if retain else 0) | kind
        data = packet(PUBLISH, struct.pack("!BHH", flags, tid, mid) + _b(msg))
        if qos == 1:
            body = self._request(data, PUBACK, lambda b: struct.unpack("!H", b[2:4])[0] == mid)
            if body[4]:
                raise MQTTSNException("PUBLISH refused: %d" % body[4])
        elif qos == 2:
            self._request(data, PUBREC, lambda b: struct.unpack("!H", b)[0] == mid)
            self._request(packet(PUBREL, struct.pack("!H", mid)), PUBCOMP)
        else:
            self._send(data)

    def subscribe(self, topic, qos=0):
        mid = self._next_id()
        if isinstance(topic, int):
            kind, name = 0x01, struct.pack("!H", topic)
        else:
            name = _b(topic)
            kind = 0x02 if len(name) == 2 and b"+" not in name and b"#" not in name else 0x00
        data = packet(SUBSCRIBE, struct.pack("!BH", _QOS[qos] | kind, mid) + name)
        body = self._request(data, SUBACK, lambda b: struct.unpack("!H", b[3:5])[0] == mid)
        _, tid, _, rc = struct.unpack("!BHHB", body)
        if rc:
            raise MQTTSNException("SUBSCRIBE refused: %d" % rc)
        if kind == 0 and tid:
            self._learn(name, tid)
        return tid

    def unsubscribe(self, topic):
        mid = self._next_id()
        if isinstance(topic, int):
            kind, name = 0x01, struct.pack("!H", topic)
        else:
            name = _b(topic)
            kind = 0x02 if len(name) == 2 else 0x00
        self._request(packet(UNSUBSCRIBE, struct.pack("!BH", kind, mid) + name), UNSUBACK)

    def sleep(self, duration):
        self._request(packet(DISCONNECT, struct.pack("!H", duration)), DISCONNECT)

    def wake(self):
        """Collect buffered messages (callback); returns after PINGRESP."""
        self._request(packet(PINGREQ, self.client_id), PINGRESP)

    def _handle(self, t, body):
        if t == PUBLISH:
            flags, tid, mid = struct.unpack("!BHH", body[:5])
            qos = (flags >> 5) & 3
            kind = flags & 3
            if kind == 0 and tid not in self.names:
                self._send(packet(PUBACK, struct.pack("!HHB", tid, mid, 2)))
                return None
            topic = self.names.get(tid) if kind == 0 else (tid if kind == 1 else struct.pack("!H", tid))
            if qos == 1:
                self._send(packet(PUBACK, struct.pack("!HHB", tid, mid, 0)))
            elif qos == 2:
                self._send(packet(PUBREC, struct.pack("!H", mid)))
                if mid in self.qos2:
                    return None
                self.qos2 = self.qos2[-7:] + [mid]
            if self.cb:
                self.cb(topic, body[5:])
            return topic
        if t == REGISTER:
            tid, mid = struct.unpack("!HH", body[:4])
            self._learn(bytes(body[4:]), tid)
            self._send(packet(REGACK, struct.pack("!HHB", tid, mid, 0)))
        elif t == PUBREL:
            self._send(packet(PUBCOMP, body[:2]))
        elif t == PINGREQ:
            self._send(packet(PINGRESP))
        elif t == DISCONNECT:
            raise MQTTSNException("disconnected by the gateway")
        return None

    def _safe(self, t, body):
        # A datagram too short for its type is dropped, never a crash.
        try:
            return self._handle(t, body)
        except MQTTSNException:
            raise
        except Exception:
            return None

    def wait_msg(self, timeout=None):
        """Handle one datagram (waiting up to `timeout` s, forever by default)."""
        got = self._recv(timeout)
        if got is None:
            return None
        return self._safe(*got)

    def check_msg(self):
        """Handle what has arrived without waiting; keeps the connection alive."""
        if self.keepalive and _diff(_ticks(), self.last) > self.keepalive * 500:
            self._send(packet(PINGREQ))
        return self.wait_msg(0)


def _b(s):
    return s.encode() if isinstance(s, str) else bytes(s)
