# A node whose LED colour follows a subscribed topic: GREEN, RED or OFF.
import time
from umqttsn import MQTTSNClient

GATEWAY = "192.168.1.10"

try:  # LoPy / Pycom boards
    import pycom

    pycom.heartbeat(False)
    COLOURS = {b"GREEN": 0x007F00, b"RED": 0x7F0000, b"OFF": 0x000000}

    def show(colour):
        pycom.rgbled(COLOURS.get(colour, 0))

except ImportError:  # anything else: print it

    def show(colour):
        print("LED", colour)


def on_message(topic, msg):
    show(bytes(msg).strip().upper())


client = MQTTSNClient("lopy-led-1", GATEWAY, 1884, keepalive=60)
client.set_callback(on_message)
client.connect()
client.subscribe("lab/led/colour", qos=1)
while True:
    client.wait_msg(1)
    client.check_msg()
