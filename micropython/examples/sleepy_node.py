# A node that sleeps between readings and collects its buffered commands on
# waking: the gateway keeps its session and buffers what arrives meanwhile.
import time
from umqttsn import MQTTSNClient

GATEWAY = "192.168.1.10"
SLEEP_S = 60

commands = []
client = MQTTSNClient("esp32-sleepy-1", GATEWAY, 1884, keepalive=120)
client.set_callback(lambda topic, msg: commands.append(bytes(msg)))
client.connect(clean_session=False)  # keep the session across sleeps
client.subscribe("nodes/sleepy-1/cmd", qos=1)
while True:
    client.publish("nodes/sleepy-1/battery", "3.71", qos=1)
    client.sleep(SLEEP_S)        # DISCONNECT with Duration: radio off from here
    time.sleep(SLEEP_S - 5)      # on a real board: machine.lightsleep()
    client.wake()                # PINGREQ with ClientId: buffered commands, PINGRESP last
    for c in commands:
        print("command", c)
    commands.clear()
