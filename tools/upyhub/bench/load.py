"""Load on the local hub: 200 devices (amqtt's MQTT client on CPython, TLS, SAS tokens) log in at once
and send QoS 1 telemetry, in rounds without and with a flood of idle TCP and half-open TLS connections
(rounds interleaved: quiet, flood, quiet, flood, ..., five of each; min / median / max of each kind). Loopback only; bounded in count and time.

Per round: logins/s (all devices connecting, at most LOGIN_CONCURRENCY TLS+CONNECT under way at once,
as from one NAT), messages/s (every device sends MESSAGES messages, each waiting for its PUBACK),
p50/p99 PUBACK latency, and how many logins succeeded. The flood comes from other loopback addresses
(127.0.0.2...), FLOOD_IDLE connections that never start TLS and FLOOD_HALF_TLS that send half a TLS
record; whatever the hub closes is opened again, for the whole round.
"""
import asyncio
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.parse

from upyhub import sas
from upyhub.bench import _hub, _stats

DEVICES = 200
MESSAGES = 10
ROUNDS = ("quiet", "flood") * _stats.RUNS
LOGIN_CONCURRENCY = 50
FLOOD_IDLE = 1000
FLOOD_HALF_TLS = 200
ROUND_TIMEOUT = 120  # seconds: a round that takes longer is reported as such and the bench stops
PAYLOAD = json.dumps({"temperature": 21.5, "humidity": 40}).encode()


def say(text):
    print("  load: %s" % text, flush=True)


def _register(data, n):
    from upyhub.hub.pki import PKI
    from upyhub.hub.registry import Registry
    reg = Registry(data)
    try:
        keys = {}
        for i in range(n):
            dev = "load-%03d" % i
            keys[dev] = reg.put_device(dev)["primary_key"]
        return PKI(data).hostname, keys
    finally:
        reg.close()


class Flood:
    """Idle TCP and half-open TLS connections from 127.0.0.2...; reopened as the hub closes them."""

    def __init__(self, port):
        self.port = port
        self.tasks = []
        self.opened = 0

    async def _hold(self, slot, half_tls):
        addr = "127.0.0.%d" % (2 + slot // 90)  # 90 per address: under the hub's per-address cap
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(addr, 0))
            except OSError:
                await asyncio.sleep(0.5)
                continue
            self.opened += 1
            if half_tls:  # a TLS handshake record header announcing 512 bytes, then nothing
                writer.write(bytes([0x16, 0x03, 0x01, 0x02, 0x00]) + os.urandom(40))
            try:
                await reader.read()  # until the hub gives up on it
            except OSError:
                pass
            writer.close()

    def start(self):
        total = FLOOD_IDLE + FLOOD_HALF_TLS
        self.tasks = [asyncio.ensure_future(self._hold(i, i >= FLOOD_IDLE)) for i in range(total)]

    async def stop(self):
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _device(dev, key, hostname, port, ca, gate, result):
    from amqtt.client import MQTTClient
    user = "%s/%s/?api-version=2021-04-12" % (hostname, dev)
    pw = sas.mint("%s/devices/%s" % (hostname, dev), key, int(time.time()) + 3600)
    uri = "mqtts://%s:%s@127.0.0.1:%d" % (urllib.parse.quote(user, safe=""), urllib.parse.quote(pw, safe=""), port)
    client = MQTTClient(client_id=dev, config={"auto_reconnect": False, "keep_alive": 60, "default_qos": 1})
    async with gate:
        try:
            await client.connect(uri, cleansession=True, cafile=str(ca))
        except Exception:
            result["failed"] += 1
            return
    result["logged_in"] += 1
    result["login_done"] = time.perf_counter()
    await result["go"].wait()
    topic = "devices/%s/messages/events/" % dev
    try:
        for _ in range(MESSAGES):
            t0 = time.perf_counter()
            await client.publish(topic, PAYLOAD, qos=1)
            result["latencies"].append(time.perf_counter() - t0)
    finally:
        await client.disconnect()


async def _round(name, keys, hostname, port, ca):
    import logging
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    flood = Flood(port) if name == "flood" else None
    if flood:
        flood.start()
        await asyncio.sleep(3)  # let it fill the hub's accept queue and handshake slots
    result = {"logged_in": 0, "failed": 0, "latencies": [], "go": asyncio.Event(), "login_done": None}
    gate = asyncio.Semaphore(LOGIN_CONCURRENCY)
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(_device(d, k, hostname, port, ca, gate, result)) for d, k in keys.items()]
    while result["logged_in"] + result["failed"] < len(keys):
        await asyncio.sleep(0.05)
    login_time = (result["login_done"] or time.perf_counter()) - t0
    t1 = time.perf_counter()
    result["go"].set()
    await asyncio.gather(*tasks, return_exceptions=True)
    send_time = time.perf_counter() - t1
    if flood:
        await flood.stop()
    lat = sorted(result["latencies"])
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {"round": name, "logins": result["logged_in"], "refused": result["failed"],
            "logins_per_s": result["logged_in"] / login_time if login_time else 0,
            "messages": len(lat), "messages_per_s": len(lat) / send_time if send_time else 0,
            "p50_ms": p(0.50), "p99_ms": p(0.99), "flood_connections": flood.opened if flood else 0,
            "median_ms": statistics.median(lat) * 1000 if lat else float("nan")}


def run():
    print("load: %d devices x %d QoS 1 messages, rounds %s; flood %d idle TCP + %d half-open TLS"
          % (DEVICES, MESSAGES, ", ".join(ROUNDS), FLOOD_IDLE, FLOOD_HALF_TLS), flush=True)
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="upyhub-bench-load-"))
    proc = None
    try:
        data = tmp / "hub"
        say("starting a hub in %s" % data)
        proc, info = _hub.start(data, what="bench load")
        hostname, keys = _register(data, DEVICES)
        ca = data / "pki" / "ca-1.pem"
        rows = []
        for name in ROUNDS:
            say("round %d/%d: %s ..." % (len(rows) + 1, len(ROUNDS), name))
            try:
                row = asyncio.run(asyncio.wait_for(_round(name, keys, hostname, info["mqtt_port"], ca),
                                                   ROUND_TIMEOUT))
            except asyncio.TimeoutError:
                say("round %s did not finish within %d s: stopping" % (name, ROUND_TIMEOUT))
                break
            rows.append(row)
            say("%-5s logins %d/%d (%.0f/s), %d messages (%.0f/s), PUBACK p50 %.1f ms p99 %.1f ms%s"
                % (name, row["logins"], DEVICES, row["logins_per_s"], row["messages"], row["messages_per_s"],
                   row["p50_ms"], row["p99_ms"],
                   ", flood connections opened %d" % row["flood_connections"] if name == "flood" else ""))
        print("load: %d devices at once, %d QoS 1 messages each; rounds of each kind: quiet %d, flood %d"
              % (DEVICES, MESSAGES, sum(r["round"] == "quiet" for r in rows), sum(r["round"] == "flood" for r in rows)))
        for key, unit, fmt in (("logins_per_s", "logins/s", "%.0f"), ("messages_per_s", "messages/s", "%.0f"),
                               ("p50_ms", "PUBACK p50 ms", "%.1f"), ("p99_ms", "PUBACK p99 ms", "%.1f")):
            _stats.table("", unit, {kind: [r[key] for r in rows if r["round"] == kind] for kind in ("quiet", "flood")},
                         fmt=fmt)
        print("  legitimate logins that succeeded: %d of %d" % (sum(r["logins"] for r in rows), DEVICES * len(rows)),
              flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
