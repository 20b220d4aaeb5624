# umqttsn under CPython against a real gateway and broker:
#   python3 e2e_cpython.py GATEWAY_PORT TOPIC_PREFIX [GATEWAY_HOST]
# Exit status 0 when every step worked. GATEWAY_HOST defaults to 127.0.0.1
# ("::1" runs it over IPv6).
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 2)[0] if "/" in __file__ else "..")
import umqttsn  # noqa: E402

port = int(sys.argv[1])
base = sys.argv[2]
host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"

got = []
sub = umqttsn.MQTTSNClient(base + "-sub", host, port, keepalive=60, retry=1, retries=5)
sub.set_callback(lambda topic, msg: got.append((topic, bytes(msg))))
sub.connect(clean_session=False)
sub.subscribe(base + "/#", qos=1)

pub = umqttsn.MQTTSNClient(base + "-pub", host, port, keepalive=60, retry=1, retries=5)
pub.connect()
for qos in (0, 1, 2):
    pub.publish(base + "/reading", '{"t": 21.5, "qos": %d}' % qos, qos=qos)

deadline = time.time() + 10
while len(got) < 3 and time.time() < deadline:
    sub.wait_msg(0.5)
assert [m for _, m in got] == [b'{"t": 21.5, "qos": %d}' % q for q in (0, 1, 2)], got
assert got[0][0] == (base + "/reading").encode(), got[0]

# Sleep: messages are buffered, and delivered on waking, PINGRESP last.
sub.sleep(60)
pub.publish(base + "/cmd", "GREEN", qos=1)
pub.publish(base + "/cmd", "RED", qos=1)
time.sleep(0.2)
got.clear()
sub.wake()
assert [m for _, m in got] == [b"GREEN", b"RED"], got
got.clear()
sub.wake()
assert got == [], "nothing twice"

pub.publish(base + "/done", "bye", qos=1)
pub.disconnect()
print("OK umqttsn end to end under CPython, gateway %s" % host)
