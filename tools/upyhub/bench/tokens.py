"""Token minting: what the firmware calls to connect, `iothub.sas.device_token(hostname, device_id, key,
expiry=...)` (checks the names and the expiry, decodes the key strictly, HMAC-SHA256, quoting), on the
MicroPython unix port from the .mpy tree, next to the same work on CPython: upyhub.sas's checks of the
hostname and device id and `mint()` (hmac + base64 + urllib.parse.quote), the same token. Both run as
their own process, in turn, RUNS times; then the heap a token costs on the device."""
import os
import subprocess
import sys

from upyhub import paths, sas
from upyhub.bench import _stats

HOST, DEVICE_ID = "myhub.azure-devices.net", "sensor-0042"
N = 3000

DEVICE_LOOP = """
import time, gc
from iothub import sas
host, dev, key, n = %r, %r, %r, %d
sas.device_token(host, dev, key, expiry=2000000000)
t0 = time.ticks_us()
for i in range(n):
    sas.device_token(host, dev, key, expiry=2000000000 + i)
print(time.ticks_diff(time.ticks_us(), t0) / n)
"""

HOST_LOOP = """
import sys, time
from upyhub import sas
host, dev, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
t0 = time.perf_counter()
for i in range(n):
    sas.check_hostname(host)
    sas.check_device_id(dev)
    sas.mint(host + "/devices/" + dev, key, 2000000000 + i)
print((time.perf_counter() - t0) / n * 1e6)
"""

PER_TOKEN = """
import gc
from iothub import sas
sas.device_token(%r, %r, %r, expiry=2000000000)
gc.collect()
gc.disable()
before = gc.mem_alloc()
sas.device_token(%r, %r, %r, expiry=2000000001)
print(gc.mem_alloc() - before)
"""


def _device(code, heapsize=None):
    cmd = [paths.micropython()] + (["-X", "heapsize=%d" % heapsize] if heapsize else []) + ["-c", code]
    return subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, MICROPYPATH=str(paths.BUILD / "mpy" / "lib")))


def _number(proc, what):
    if proc.returncode != 0:
        raise SystemExit("bench tokens: %s failed: %s" % (what, (proc.stderr.strip().splitlines() or ["?"])[-1]))
    return float(proc.stdout.split()[-1])


def smallest_heap(key):
    """Smallest -X heapsize (bytes) in which importing iothub.sas and minting a device token succeeds."""
    code = "from iothub import sas\nsas.device_token(%r, %r, %r, expiry=2000000000)\n" % (HOST, DEVICE_ID, key)
    lo, hi = 1024, 64 * 1024
    while hi - lo > 256:
        mid = (lo + hi) // 2
        if _device(code, mid).returncode == 0:
            hi = mid
        else:
            lo = mid
    return hi


def run():
    key = sas.new_key()
    firmware, peer = "firmware", "CPython"
    results = _stats.interleaved("tokens", [
        (firmware, lambda: _number(_device(DEVICE_LOOP % (HOST, DEVICE_ID, key, N)), "the device loop")),
        (peer, lambda: _number(subprocess.run([sys.executable, "-c", HOST_LOOP, HOST, DEVICE_ID, key, str(N)],
                                              capture_output=True, text=True), "the CPython loop")),
    ])
    per_token = int(_number(_device(PER_TOKEN % ((HOST, DEVICE_ID, key) * 2)), "the heap count"))
    heap = smallest_heap(key)
    print("SAS device token for %s/%s, %d tokens per run, %d runs interleaved. firmware: iothub.sas.device_token "
          "on the MicroPython unix port (.mpy); CPython: upyhub.sas's checks + mint (hmac, urllib.parse.quote)"
          % (HOST, DEVICE_ID, N, _stats.RUNS))
    _stats.table("", "us/token", results)
    _stats.ratio(firmware, peer, results, "(below 1: the firmware is faster)")
    print("  heap allocated per token on the device (gc off): %d bytes" % per_token)
    print("  smallest -X heapsize that imports iothub.sas and mints: %.1f KB" % (heap / 1024))
