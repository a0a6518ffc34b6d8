"""The IoT Hub session: the firmware on the unix port vs the official `azure-iot-device` SDK on
CPython, against the same local hub in the same run.

- from process start to the first telemetry PUBACK (process spawn, imports, TLS, CONNECT,
  subscriptions, one QoS 1 message),
- QoS 1 messages per second over one TLS session (one message in flight, as both send them),
- the firmware's heap: in use once connected, and the smallest `-X heapsize` that still runs
  connect + 20 messages (found by bisection).
The SDK connects to port 8883 only, so the hub listens there (127.0.0.1).
"""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from upyhub import paths, sim
from upyhub.bench import _hub

N = 300
PORT = 8883
BODY = '{"temperature":21.50,"seq":%d}'

DEVICE = """
import time, gc
import board
from iothub import transport
transport.reserve()
from iothub import config
cfg, sec = config.load(board.flash_root())
from iothub.session import Session
s = Session(cfg, sec, root=board.flash_root(), log=lambda m: None)
s.send('%s' %% 0)
while s.pending() or not s.connected:
    s.poll(5)
print("FIRST")
gc.collect()
used = gc.mem_alloc()
n = %d
t0 = time.ticks_ms()
for i in range(1, n + 1):
    s.send('%s' %% i)
    s.poll(0)
while s.pending():
    s.poll(5)
dt = time.ticks_diff(time.ticks_ms(), t0)
print("RATE", n, dt, used)
s.close()
"""

SDK = """
import sys, time
from azure.iot.device import IoTHubDeviceClient, Message
key, hostname, device, ca, n = sys.argv[1], sys.argv[2], sys.argv[3], open(sys.argv[4]).read(), int(sys.argv[5])
c = IoTHubDeviceClient.create_from_symmetric_key(symmetric_key=key, hostname=hostname, device_id=device,
                                                 server_verification_cert=ca, gateway_hostname="127.0.0.1")
c.connect()
def msg(i):
    m = Message(%r %% i)
    m.content_type, m.content_encoding = "application/json", "utf-8"
    return m
c.send_message(msg(0))
print("FIRST", flush=True)
t0 = time.perf_counter()
for i in range(1, n + 1):
    c.send_message(msg(i))
dt = time.perf_counter() - t0
print("RATE", n, int(dt * 1000), 0, flush=True)
c.shutdown()
"""


def _timed(argv, env=None, cwd=None, timeout=300):
    """Spawn; seconds until it prints FIRST; then its RATE line (n, ms, heap used)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    first = None
    rate = None
    try:
        for line in p.stdout:
            if line.startswith("FIRST") and first is None:
                first = time.perf_counter() - t0
            elif line.startswith("RATE"):
                rate = [int(x) for x in line.split()[1:]]
        p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
    if first is None or rate is None:
        err = p.stderr.read().strip().splitlines()
        raise SystemExit("bench session: %s failed: %s" % (pathlib.Path(argv[0]).name, err[-1] if err else "?"))
    return first, rate


# The board-faithful port (tools/setup/micropython32.sh): 32-bit objects, MicroPython's own
# bare-metal mbed TLS config; its two memory models are ESP32's (mbed TLS outside the Python heap)
# and RP2040's (every mbed TLS allocation on the Python heap).
BOARD_MODELS = (("esp32 model", {"MP32_MBEDTLS_ALLOC": "libc"}), ("rp2 model", {}))


def _firmware(flash, n, heapsize=None, exe=None, extra_env=None):
    argv = [exe or paths.micropython()] + (["-X", "heapsize=%d" % heapsize] if heapsize else [])
    argv += ["-c", DEVICE % (BODY, n, BODY)]
    env = dict(os.environ, MICROPYPATH=str(paths.BUILD / "mpy" / "lib"), UPYHUB_FLASH=str(flash))
    env.update(extra_env or {})
    return argv, env


def smallest_heap(flash, lo=48 * 1024, hi=256 * 1024, step=2048, exe=None, extra_env=None):
    def ok(size):
        argv, env = _firmware(flash, 20, size, exe, extra_env)
        try:
            # a session that cannot connect retries forever: 20 s is ten times a good run
            p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return False
        return p.returncode == 0 and "RATE" in p.stdout

    if not ok(hi):
        return None
    while hi - lo > step:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _step(text):
    """A progress line on stderr: the session benchmark runs for minutes."""
    print("bench session: %s" % text, file=sys.stderr, flush=True)


def run():
    from upyhub.hub.client import ServiceClient

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="upyhub-bench-"))
    hub = None
    try:
        data = tmp / "hub"
        _step("starting a local hub")
        hub = _hub.start(data, PORT, "bench session")[0]
        hostname, host, port, service, ca = sim.hub_info(data)
        assert isinstance(service, ServiceClient)
        fw_key = service.put_device("bench-fw")["authentication"]["symmetricKey"]["primaryKey"]
        sdk_key = service.put_device("bench-sdk")["authentication"]["symmetricKey"]["primaryKey"]
        flash = tmp / "flash"
        sim.write_flash(flash, hostname=hostname, device_id="bench-fw", device_key=fw_key, ca_pem=ca, port=port,
                        gateway=host)
        (tmp / "ca.pem").write_bytes(ca)
        argv, env = _firmware(flash, N)
        _step("the firmware: connect, then %d messages" % N)
        fw_first, (n, fw_ms, fw_used) = _timed(argv, env=env)
        _step("azure-iot-device: connect, then %d messages" % N)
        sdk_first, (_, sdk_ms, _) = _timed([sys.executable, "-c", SDK % BODY, sdk_key, hostname, "bench-sdk",
                                            str(tmp / "ca.pem"), str(N)])
        got = {d: len(service.telemetry(d)) for d in ("bench-fw", "bench-sdk")}
        _step("the smallest heap the firmware runs in (a search: about a minute)")
        heap = smallest_heap(flash)
        mp32 = paths.BUILD / "micropython-32"
        boards = []
        if mp32.exists():
            for name, extra in BOARD_MODELS:
                _step("the board-faithful 32-bit port, %s (heap in use, then the smallest heap)" % name)
                argv, env = _firmware(flash, 20, exe=str(mp32), extra_env=extra)
                used = _timed(argv, env=env)[1][2]
                boards.append((name, used, smallest_heap(flash, 16 * 1024, 160 * 1024, 1024, str(mp32), extra)))
    finally:
        sim.stop(hub, 30)
        shutil.rmtree(tmp, ignore_errors=True)
    fw_rate, sdk_rate = n / (fw_ms / 1000.0), n / (sdk_ms / 1000.0)
    print("IoT Hub session over TLS against the local hub (one run, same hub, QoS 1, one message in flight)")
    print("  %-40s %14s %14s" % ("", "first PUBACK s", "messages/s"))
    print("  %-40s %14.2f %14.0f" % ("upyhub firmware, MicroPython unix (.mpy)", fw_first, fw_rate))
    print("  %-40s %14.2f %14.0f" % ("azure-iot-device 2.14 SDK, CPython", sdk_first, sdk_rate))
    print("  %-40s %13.2fx %13.2fx" % ("ratio firmware / SDK", fw_first / sdk_first, fw_rate / sdk_rate))
    print("  messages stored by the hub: firmware %d, SDK %d (of %d each)" % (got["bench-fw"], got["bench-sdk"], N + 1))
    print("  firmware heap in use once connected: %.1f KB (of which this unix build's TLS context ~39 KB)"
          % (fw_used / 1024))
    if heap:
        print("  firmware peak: smallest -X heapsize for connect + 20 messages: %.0f KB" % (heap / 1024))
    else:
        print("  firmware peak: did not run within 256 KB")
    for name, used, smallest in boards:
        print("  board-faithful 32-bit port, %s: heap in use once connected %.1f KB; smallest -X heapsize for "
              "connect + 20 messages: %s" % (name, used / 1024, "%.0f KB" % (smallest / 1024) if smallest else "> 160 KB"))
