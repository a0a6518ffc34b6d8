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

    def __init__(self, hub, client_id, password=None, username=None, cert=None, ca=None, address=None,
                 context=None):
        """address: (host, port), default the hub's MQTT endpoint; context: an SSLContext of one's own."""
        self.client_id = client_id
        self.messages = []
        self.connack = None
        self.disconnected = threading.Event()
        self.subacks = {}
        c = self.client = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
        user = username if username is not None else "%s/%s/?api-version=2021-04-12" % (hub.hostname, client_id)
        c.username_pw_set(user, password)
        ctx = context or ssl.create_default_context(cafile=str(ca or hub.ca_path))
        if cert and not context:
            ctx.load_cert_chain(*cert)
        c.tls_set_context(ctx)
        c.on_connect = self._on_connect
        c.on_message = lambda cl, u, m: self.messages.append((m.topic, m.payload))
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = lambda cl, u, mid, granted: self.subacks.__setitem__(mid, granted)
        c.connect(*(address or (hub.host, hub.mqtt_port)), keepalive=60)
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


# --- raw MQTT over TLS, for clients that break the rules paho enforces ---
def mqtt_str(s):
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def remaining_length(n):
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(hub, client_id, password, keepalive=60):
    body = (mqtt_str("MQTT") + bytes([4, 0xC2]) + keepalive.to_bytes(2, "big") + mqtt_str(client_id)
            + mqtt_str("%s/%s/?api-version=2021-04-12" % (hub.hostname, client_id)) + mqtt_str(password))
    return bytes([0x10]) + remaining_length(len(body)) + body


def publish_packet(topic, payload, qos=1, packet_id=1):
    var = mqtt_str(topic) + (packet_id.to_bytes(2, "big") if qos else b"")
    return bytes([0x30 | (qos << 1)]) + remaining_length(len(var) + len(payload)) + var + payload


def raw_device(hub, device_id, key, source=None):
    """A logged-in TLS socket speaking raw MQTT (CONNACK checked); the caller closes it."""
    import socket
    raw = socket.create_connection((hub.host, hub.mqtt_port), timeout=60, source_address=source)
    s = ssl.create_default_context(cafile=str(hub.ca_path)).wrap_socket(raw, server_hostname=hub.hostname)
    s.sendall(connect_packet(hub, device_id, token(hub, device_id, key)))
    assert s.recv(4) == bytes([0x20, 2, 0, 0])
    return s


def closed_by_peer(sock, timeout=WAIT):
    """True once the other side closed the connection (EOF or reset), reading whatever it still sends."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset, or a TLS error from the cut
        pass
    return True
