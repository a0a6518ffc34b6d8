"""A device (or an attacker) on the hub's MQTT endpoint, with paho-mqtt 1.6.1, and waits on conditions."""
import ssl
import threading
import time

import paho.mqtt.client as mqtt

from polling import wait_until
from upyhub import sas

WAIT = 30  # seconds: generous deadline for conditions on a loaded machine


def wait_for(cond, timeout=WAIT, what="condition"):
    return wait_until(cond, timeout, what, interval=0.02)


def token(hub, device_id, key, ttl=600, sr=None, policy=None, expiry=None):
    return sas.mint(sr or "%s/devices/%s" % (hub.hostname, device_id), key,
                    expiry or int(time.time()) + ttl, policy=policy)


class Device:
    """One MQTT connection; never reconnects (a refusal stays a refusal, a dropped connection stays dropped)."""

    def __init__(self, hub, client_id, password=None, username=None, cert=None, ca=None):
        self.client_id = client_id
        self.messages = []
        self.connack = None
        self.disconnected = threading.Event()
        self.subacks = {}
        c = self.client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
        user = username if username is not None else "%s/%s/?api-version=2021-04-12" % (hub.hostname, client_id)
        c.username_pw_set(user, password)
        ctx = ssl.create_default_context(cafile=str(ca or hub.ca_path))
        if cert:
            ctx.load_cert_chain(*cert)
        c.tls_set_context(ctx)
        c.on_connect = self._on_connect
        c.on_message = lambda cl, u, m: self.messages.append((m.topic, m.payload))
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = lambda cl, u, mid, granted: self.subacks.__setitem__(mid, granted)
        c.connect(hub.host, hub.mqtt_port, keepalive=60)
        c.loop_start()  # paho's own network thread: it serialises writes on the TLS socket

    # disconnect() marks the client as leaving, so paho's thread ends instead of reconnecting
    def _on_connect(self, client, userdata, flags, rc):
        self.connack = rc
        if rc != 0:
            client.disconnect()

    def _on_disconnect(self, client, userdata, rc):
        self.disconnected.set()
        client.disconnect()

    def wait_connack(self):
        wait_for(lambda: self.connack is not None or self.disconnected.is_set(), what="CONNACK")
        return self.connack

    @property
    def connected(self):
        return self.connack == 0 and not self.disconnected.is_set()

    def wait_disconnected(self, timeout=WAIT):
        assert self.disconnected.wait(timeout), "the hub did not close the connection"

    def subscribe(self, *filters, qos=1):
        rc, mid = self.client.subscribe([(f, qos) for f in filters])
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return wait_for(lambda: self.subacks.get(mid), what="SUBACK")

    def publish(self, topic, payload=b"", qos=1):
        return self.client.publish(topic, payload, qos=qos)

    def wait_message(self, prefix, timeout=WAIT):
        return wait_for(lambda: next((m for m in self.messages if m[0].startswith(prefix)), None), timeout,
                        "a message on " + prefix)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
