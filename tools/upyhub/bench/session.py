"""The IoT Hub session against the same local hub, three clients side by side, in turn, RUNS rounds:

- the firmware: MicroPython unix port, the board tree (.mpy) `upyhub build` makes;
- the official device SDK, `azure-iot-device` 2.14 on CPython, with handlers for C2D messages, direct
  methods and desired properties (so it subscribes to what the firmware subscribes to) and its twin
  fetched after connecting, as the firmware does;
- paho-mqtt 1.6 on CPython: a minimal hand-written client doing the same (the four subscriptions, the
  twin GET, QoS 1 telemetry): what the protocol costs without an SDK.

Cold start: from process start to the first telemetry message stored by the hub (its PUBACK is sent
right after). The firmware boots as a board does: boot.py, then main.py (configuration, network and
clock, the session, the sample app, which sends its first reading at once), from a fresh flash folder,
not confined (the sandbox's launcher is a CPython process: it would be charged to the firmware). The
peers connect, subscribe, fetch the twin, send one message. Measured the same way for all three: a
long poll of the hub's stored telemetry, answered as a message is stored.

Throughput: QoS 1 messages per second over one TLS session, N messages of the same body, from the
first send to the last PUBACK (each client's own clock), with 1 and with 8 messages in flight: the
firmware's `inflight` setting (the flash outbox's window; 8 is the default), the SDK's send_message
from 1 or 8 threads, paho's max_inflight_messages. The hub must have stored every message.
The SDK connects to port 8883 only, so the hub listens there (127.0.0.1): in a private network namespace
when this runs as root with unshare(1) (no other hub on the machine can hold that port), else on the
machine's loopback.
"""
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from upyhub import paths, sim
from upyhub.bench import _hub, _stats

N = 1000
PORT = 8883
BODY = '{"temperature":21.50,"seq":%d}'
COLD_RUNS = _stats.RUNS
RATE_RUNS = _stats.RUNS

FIRMWARE_RATE = """
import time
import board
from iothub import transport
transport.reserve()
from iothub import config
cfg, sec = config.load(board.flash_root())
cfg["inflight"] = %d
from iothub.session import Session
s = Session(cfg, sec, root=board.flash_root(), log=lambda m: None)
s.send('%s' %% 0)
while s.pending() or not s.connected:
    s.poll(5)
n = %d
t0 = time.ticks_ms()
for i in range(1, n + 1):
    while s.pending() >= cfg["inflight"]:  # a new message as the window has room (the SDK's threads block
        s.poll(5)                          # the same way); sent all at once, they would overflow the outbox
    s.send('%s' %% i)
    s.poll(0)
while s.pending():
    s.poll(5)
print("RATE", time.ticks_diff(time.ticks_ms(), t0))
s.close()
"""

# argv: key hostname device_id ca_path mode n inflight; mode "cold" sends one message, "rate" n more
SDK = """
import sys, threading, time
from azure.iot.device import IoTHubDeviceClient, Message
key, hostname, device, ca, mode, n, inflight = sys.argv[1:8]
n, inflight = int(n), int(inflight)
c = IoTHubDeviceClient.create_from_symmetric_key(symmetric_key=key, hostname=hostname, device_id=device,
                                                 server_verification_cert=open(ca).read(),
                                                 gateway_hostname="127.0.0.1")
c.on_message_received = lambda m: None
c.on_method_request_received = lambda r: None
c.on_twin_desired_properties_patch_received = lambda p: None
c.connect()
c.get_twin()
def msg(i):
    m = Message(%r %% i)
    m.content_type, m.content_encoding = "application/json", "utf-8"
    return m
c.send_message(msg(0))
if mode == "rate":
    def sender(k):
        for i in range(k, n + 1, inflight):
            c.send_message(msg(i))
    t0 = time.perf_counter()
    threads = [threading.Thread(target=sender, args=(k,)) for k in range(1, inflight + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("RATE", int((time.perf_counter() - t0) * 1000), flush=True)
c.shutdown()
"""

PAHO = """
import base64, hashlib, hmac, sys, threading, time, urllib.parse
import paho.mqtt.client as mqtt
key, hostname, device, ca, mode, n, inflight = sys.argv[1:8]
n, inflight = int(n), int(inflight)
q = lambda s: urllib.parse.quote(s, safe="")
sr, se = q(hostname + "/devices/" + device), int(time.time()) + 3600
sig = base64.b64encode(hmac.new(base64.b64decode(key), ("%%s\\n%%d" %% (sr, se)).encode(), hashlib.sha256).digest())
token = "SharedAccessSignature sr=%%s&sig=%%s&se=%%d" %% (sr, q(sig.decode()), se)
twin, subscribed = threading.Event(), threading.Event()
c = mqtt.Client(client_id=device, protocol=mqtt.MQTTv311)
c.username_pw_set(hostname + "/" + device + "/?api-version=2021-04-12", token)
c.tls_set(ca_certs=ca)
c.max_inflight_messages_set(inflight)
c.on_subscribe = lambda c, u, mid, q: subscribed.set()
c.on_message = lambda c, u, m: twin.set() if m.topic.startswith("$iothub/twin/res/200/") else None
c.connect("127.0.0.1", %d)
c.loop_start()
c.subscribe([("devices/%%s/messages/devicebound/#" %% device, 1), ("$iothub/twin/res/#", 0),
             ("$iothub/twin/PATCH/properties/desired/#", 0), ("$iothub/methods/POST/#", 0)])
subscribed.wait(30)
c.publish("$iothub/twin/GET/?$rid=1", b"", qos=0)
twin.wait(30)
topic = "devices/%%s/messages/events/$.ct=application%%%%2Fjson&$.ce=utf-8" %% device
c.publish(topic, %r %% 0, qos=1).wait_for_publish()
if mode == "rate":
    t0 = time.perf_counter()
    sent = [c.publish(topic, %r %% i, qos=1) for i in range(1, n + 1)]
    for m in sent:
        m.wait_for_publish()
    print("RATE", int((time.perf_counter() - t0) * 1000), flush=True)
c.disconnect()
c.loop_stop()
""" % (PORT, BODY, BODY)


def _step(text):
    _stats.progress("session", text)


class Bench:
    def __init__(self, tmp):
        from upyhub.hub.client import ServiceClient

        self.tmp = tmp
        self.hub = _hub.start(tmp / "hub", PORT, "bench session")[0]
        self.hostname, self.host, self.port, self.service, self.ca = sim.hub_info(tmp / "hub")
        assert isinstance(self.service, ServiceClient)
        (tmp / "ca.pem").write_bytes(self.ca)
        self.keys = {d: self.service.put_device(d)["authentication"]["symmetricKey"]["primaryKey"]
                     for d in ("bench-fw", "bench-sdk", "bench-paho")}

    def tail(self):
        """The hub's latest telemetry sequence number (it keeps counting across devices)."""
        seq = 0
        while True:
            rows = self.service.telemetry(since=seq)
            if not rows:
                return seq
            seq = rows[-1]["seq"]

    def stored(self, device, since):
        """How many messages of device the hub stored after sequence number since."""
        n = 0
        while True:
            rows = self.service.telemetry(device, since=since)
            if not rows:
                return n
            n, since = n + len(rows), rows[-1]["seq"]

    def flash(self, **settings):
        flash = self.tmp / "flash"
        shutil.rmtree(flash, ignore_errors=True)
        sim.write_flash(flash, hostname=self.hostname, device_id="bench-fw", device_key=self.keys["bench-fw"],
                        ca_pem=self.ca, port=self.port, gateway=self.host, **settings)
        return flash

    def peer(self, code, device, mode, n=0, inflight=1):
        return [sys.executable, "-c", code, self.keys[device], self.hostname, device, str(self.tmp / "ca.pem"),
                mode, str(n), str(inflight)]

    def cold(self, device, start):
        """Seconds from start() (which spawns the process) to the device's first stored message."""
        since = self.tail()
        t0 = time.perf_counter()
        proc = start()
        try:
            while not self.service.telemetry(device, since=since, wait=5):  # answers as soon as one is stored
                if time.perf_counter() > t0 + 60 or proc.poll() not in (None, 0):
                    raise SystemExit("bench session: %s sent nothing within 60 s (exit %s)" % (device, proc.poll()))
            return time.perf_counter() - t0
        finally:
            sim.stop(proc)

    def cold_firmware(self):
        flash = self.flash(telemetry_interval=600)
        return self.cold("bench-fw", lambda: sim.start(flash, confine=False, stdout=subprocess.DEVNULL))

    def cold_peer(self, code, device):
        return self.cold(device, lambda: subprocess.Popen(self.peer(code, device, "cold"), stdout=subprocess.DEVNULL,
                                                          stderr=subprocess.DEVNULL))

    def rate(self, device, argv, env=None):
        """Messages per second of one run of argv (it prints RATE <ms> for N messages)."""
        since = self.tail()
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        lines = [x for x in p.stdout.splitlines() if x.startswith("RATE")]
        if p.returncode != 0 or not lines:
            raise SystemExit("bench session: %s failed: %s" % (device, (p.stderr.strip().splitlines() or ["?"])[-1]))
        got = self.stored(device, since)
        if got != N + 1:
            raise SystemExit("bench session: the hub stored %d of %s's %d messages" % (got, device, N + 1))
        return N / (int(lines[-1].split()[1]) / 1000.0)

    def rate_firmware(self, inflight):
        flash = self.flash()
        env = dict(os.environ, MICROPYPATH=str(paths.BUILD / "mpy" / "lib"), UPYHUB_FLASH=str(flash))
        code = FIRMWARE_RATE % (inflight, BODY, N, BODY)
        return self.rate("bench-fw", [paths.micropython(), "-c", code], env)

    def close(self):
        sim.stop(self.hub, 30)


def _private_network():
    """Run this benchmark again in a network namespace of its own (with its loopback up); True when it did."""
    if os.environ.get("UPYHUB_BENCH_NETNS") or os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    _step("in a private network namespace: port 8883 is its own")
    code = "from upyhub.bench import session\nsession.loopback_up()\nsession.run()"
    p = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", code],
                       env=dict(os.environ, UPYHUB_BENCH_NETNS="1"))
    if p.returncode:
        raise SystemExit(p.returncode)
    return True


def loopback_up():
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, req))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS: IFF_UP


def run():
    if _private_network():
        return
    if not (paths.BUILD / "mpy" / "main.py").exists():
        raise SystemExit("bench session: build/mpy is missing: run `make setup`")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="upyhub-bench-"))
    b = None
    try:
        _step("starting a local hub on 127.0.0.1:%d" % PORT)
        b = Bench(tmp)
        cold = _stats.interleaved("session cold start", [
            ("firmware", b.cold_firmware),
            ("azure-iot-device", lambda: b.cold_peer(SDK % BODY, "bench-sdk")),
            ("paho-mqtt", lambda: b.cold_peer(PAHO, "bench-paho")),
        ], runs=COLD_RUNS, fmt="%.3f s")
        rate = _stats.interleaved("session throughput", [
            ("firmware, inflight 1", lambda: b.rate_firmware(1)),
            ("azure-iot-device, 1 in flight", lambda: b.rate("bench-sdk", b.peer(SDK % BODY, "bench-sdk", "rate", N, 1))),
            ("paho-mqtt, 1 in flight", lambda: b.rate("bench-paho", b.peer(PAHO, "bench-paho", "rate", N, 1))),
            ("firmware, inflight 8", lambda: b.rate_firmware(8)),
            ("azure-iot-device, 8 in flight", lambda: b.rate("bench-sdk", b.peer(SDK % BODY, "bench-sdk", "rate", N, 8))),
            ("paho-mqtt, 8 in flight", lambda: b.rate("bench-paho", b.peer(PAHO, "bench-paho", "rate", N, 8))),
        ], runs=RATE_RUNS, fmt="%.0f msg/s")
    finally:
        if b is not None:
            b.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print("Cold start: process start to the first telemetry message stored by the hub (TLS, CONNECT, four "
          "subscriptions, twin GET, one QoS 1 message); %d runs interleaved" % COLD_RUNS)
    _stats.table("", "seconds", cold, fmt="%.3f")
    _stats.ratio("firmware", "azure-iot-device", cold, "(below 1: the firmware is faster)")
    _stats.ratio("firmware", "paho-mqtt", cold)
    print("Throughput: QoS 1 messages per second over one TLS session, %d messages of %d bytes; %d runs "
          "interleaved" % (N, len(BODY % 100), RATE_RUNS))
    _stats.table("", "msg/s", rate, fmt="%.0f")
    for k in ("1", "8"):
        fw = "firmware, inflight " + k
        _stats.ratio(fw, "azure-iot-device, %s in flight" % k, rate, "(above 1: the firmware is faster)")
        _stats.ratio(fw, "paho-mqtt, %s in flight" % k, rate)
