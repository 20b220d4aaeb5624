# A node that publishes a JSON reading every few seconds.
# Copy umqttsn.py and this file to the board (see docs/micropython.md).
import time
import ujson as json
from umqttsn import MQTTSNClient

GATEWAY = "192.168.1.10"  # the gateway's address (a Raspberry Pi, say)

client = MQTTSNClient("lopy-weather-1", GATEWAY, 1884, keepalive=60)
client.connect()
n = 0
while True:
    n += 1
    reading = {"n": n, "temperature": 21.5, "humidity": 48}  # read your sensor here
    client.publish("sensors/weather-1", json.dumps(reading), qos=1)
    client.check_msg()  # answers the gateway and keeps the session alive
    time.sleep(5)
