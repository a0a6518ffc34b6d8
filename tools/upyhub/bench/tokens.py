"""Token minting: the device library on the unix port vs CPython's hmac, same token, same run."""
import os
import subprocess
import time

from upyhub import paths, sas

URI = "myhub.azure-devices.net/devices/sensor-0042"
N = 2000

DEVICE_LOOP = """
import time, gc
from iothub import sas
key, uri, n = %r, %r, %d
sas.token(uri, key, 1800000000)
t0 = time.ticks_us()
for i in range(n):
    sas.token(uri, key, 1800000000 + i)
dt = time.ticks_diff(time.ticks_us(), t0)
gc.collect()
gc.disable()
before = gc.mem_alloc()
sas.token(uri, key, 1800000000)
per_token = gc.mem_alloc() - before
print(dt / n, per_token)
"""


def _device(code, mpy_lib, heapsize=None):
    cmd = [paths.micropython()] + (["-X", "heapsize=%d" % heapsize] if heapsize else []) + ["-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MICROPYPATH=str(mpy_lib)))


def smallest_heap(key, mpy_lib):
    """Smallest -X heapsize (bytes) in which importing iothub.sas and minting a token succeeds."""
    code = "from iothub import sas\nsas.token(%r, %r, 1800000000)\n" % (URI, key)
    lo, hi = 1024, 64 * 1024
    while hi - lo > 256:
        mid = (lo + hi) // 2
        if _device(code, mpy_lib, mid).returncode == 0:
            hi = mid
        else:
            lo = mid
    return hi


def run():
    key = sas.new_key()
    mpy_lib = paths.BUILD / "mpy" / "lib"
    out = _device(DEVICE_LOOP % (key, URI, N), mpy_lib)
    if out.returncode != 0:
        raise SystemExit("bench tokens: device loop failed: " + out.stderr.strip().splitlines()[-1])
    dev_us, per_token = out.stdout.split()
    dev_us = float(dev_us)
    t0 = time.perf_counter()
    for i in range(N):  # the host's own minting (upyhub.sas: CPython hmac + urllib.parse.quote)
        sas.mint(URI, key, 1800000000 + i)
    cpy_us = (time.perf_counter() - t0) / N * 1e6
    heap = smallest_heap(key, mpy_lib)
    print("SAS token minting (%d tokens, one run, .mpy on the unix port)" % N)
    print("  %-44s %10s" % ("", "us/token"))
    print("  %-44s %10.1f" % ("upyhub iothub.sas on MicroPython unix port", dev_us))
    print("  %-44s %10.1f" % ("CPython hmac + urllib.parse.quote", cpy_us))
    print("  %-44s %9.1fx" % ("ratio MicroPython / CPython", dev_us / cpy_us))
    print("  heap allocated per token (gc off): %s bytes" % per_token)
    print("  peak heap: smallest -X heapsize that imports iothub.sas and mints: %.1f KB" % (heap / 1024))
