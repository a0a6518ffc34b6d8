"""What the firmware costs a board: Python heap and flash, from .mpy files and frozen into the firmware.

Heap, on the board-faithful 32-bit port in both memory models (ESP32: mbed TLS outside the Python heap;
RP2040: every mbed TLS allocation on it), for the firmware as `upyhub build` makes it (.mpy files in
/lib, loaded into RAM) and frozen into the port (build/micropython-32-frozen: bytecode in flash):
- in use while connected: the sample app's own `gc.mem_alloc()` after a collection, max over a run;
- peak: the smallest `-X heapsize` in which the whole session of tests/firmware/test_session_heap.py
  (TLS, telemetry, a method, a desired property, a hub restart and reconnect, more telemetry) runs
  without a memory failure (bisection, 1 KB steps);
and what an application has left on a Pico W (about 200 KB of heap) and an ESP32-WROOM without PSRAM
(about 110 KB): the board's heap less the peak. (Flash sizes: `python -m upyhub.bench flash`.)
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from upyhub import build, paths, sim
from upyhub.bench import _hub, _stats

MODELS = (("esp32", {"MP32_MBEDTLS_ALLOC": "libc"}), ("rp2", {}))
BOARD_HEAP = {"esp32": 110 * 1024, "rp2": 200 * 1024}  # ESP32-WROOM without PSRAM, Pico W
DEVICE = "footprint-1"
STEP = 1024


def say(text):
    _stats.progress("footprint", text)


class Run:
    """One session of the heap test's scenario against the bench hub; raises Failed (with the reason)."""

    FAIL = re.compile(r"MemoryError|memory allocation failed|not enough memory|ENOMEM|crashed|Traceback")

    def __init__(self, bench, exe, tree, heap, env):
        # env: the memory model; the sandbox passes it on from this process's environment (sandbox.PASS_ENV)
        self.bench, self.lines = bench, []
        os.environ.pop("MP32_MBEDTLS_ALLOC", None)
        os.environ.update(env)
        flash = bench.tmp / "flash"
        shutil.rmtree(flash, ignore_errors=True)
        sim.write_flash(flash, hostname=bench.hostname, device_id=DEVICE, device_key=bench.key, ca_pem=bench.ca,
                        port=bench.port, gateway=bench.host, telemetry_interval=1, retry_cap=2)
        argv, penv, _ = sim.command(flash, tree=tree, heapsize=heap, executable=exe)
        self.proc = subprocess.Popen(argv, env=penv, cwd=str(flash), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def count(self, text):
        return sum(text in x for x in list(self.lines))

    def wait(self, cond, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not cond():
            bad = [x for x in list(self.lines) if self.FAIL.search(x)]
            if bad:
                raise _stats.Failed(bad[0])
            if self.proc.poll() is not None:
                raise _stats.Failed("exited (%s) before %s" % (self.proc.returncode, what))
            if time.monotonic() > deadline:
                raise _stats.Failed("no %s within %d s" % (what, timeout))
            time.sleep(0.1)

    def used(self):
        return [int(m.group(1)) for m in (re.search(r"heap (\d+) used", x) for x in list(self.lines)) if m]

    def scenario(self):
        b = self.bench
        self.wait(lambda: self.count("iothub: connected to") >= 1, "connection")
        n0 = b.stored()
        self.wait(lambda: b.stored() >= n0 + 3, "telemetry")
        if b.service.invoke_method(DEVICE, "ping", {"x": 1}, timeout=30)[0] != 200:
            raise _stats.Failed("method")
        b.service.update_twin(DEVICE, {"telemetry_interval": 2})
        self.wait(lambda: self.count("app: telemetry every 2 s") >= 1, "desired property")
        queued = len(self.used())
        self.wait(lambda: len(self.used()) >= queued + 2, "telemetry after the desired property")
        b.restart_hub()
        self.wait(lambda: self.count("iothub: connected to") >= 2, "reconnection", 120)
        n1 = b.stored()
        self.wait(lambda: b.stored() >= n1 + 2, "telemetry after the reconnection")
        if b.service.invoke_method(DEVICE, "ping", {"x": 2}, timeout=30)[0] != 200:
            raise _stats.Failed("method after the reconnection")
        self.wait(lambda: True, "the end")  # a last look for memory failures
        return max(self.used())

    def stop(self):
        sim.stop(self.proc)


class Bench:
    def __init__(self, tmp):
        self.tmp = tmp
        self.data = tmp / "hub"
        self.hub, self.info = _hub.start(self.data, what="bench footprint")
        self.hostname, self.host, self.port, self.service, self.ca = sim.hub_info(self.data)
        self.key = self.service.put_device(DEVICE)["authentication"]["symmetricKey"]["primaryKey"]

    def stored(self):
        return len(self.service.telemetry(DEVICE))

    def restart_hub(self):
        sim.stop(self.hub, 30)
        self.hub, self.info = _hub.start(self.data, self.port, "bench footprint", self.info["https_port"])

    def session(self, exe, tree, heap, env):
        """(ok, heap in use while connected or the reason it failed)."""
        run = Run(self, exe, tree, heap, env)
        try:
            return True, run.scenario()
        except _stats.Failed as e:
            return False, str(e)
        finally:
            run.stop()

    def smallest_heap(self, exe, tree, env, lo, hi):
        ok, _ = self.session(exe, tree, hi, env)
        if not ok:
            return None
        while hi - lo > STEP:
            mid = (lo + hi) // 2 // STEP * STEP
            ok, _ = self.session(exe, tree, mid, env)
            say("  -X heapsize=%dK: %s" % (mid // 1024, "runs" if ok else "fails"))
            if ok:
                hi = mid
            else:
                lo = mid
        return hi

    def close(self):
        sim.stop(self.hub, 30)


def run():
    exe = {"mpy": paths.BUILD / "micropython-32", "frozen": paths.BUILD / "micropython-32-frozen"}
    missing = [str(p) for p in exe.values() if not p.exists()]
    if missing:
        print("  footprint: %s missing (make setup): skipped" % ", ".join(missing))
        return
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="upyhub-bench-footprint-"))
    trees = {"frozen": build.frozen_tree(tmp / "frozen"), "mpy": tmp / "mpy"}
    subprocess.run([str(paths.ROOT / ".venv" / "bin" / "upyhub"), "build", "--board", "unix", "--out",
                    str(trees["mpy"]), "--quiet"], check=True)
    bench = Bench(tmp)
    rows = []
    try:
        for model, env in MODELS:
            for kind in ("mpy", "frozen"):
                used = []
                for i in range(3):
                    ok, got = bench.session(str(exe[kind]), trees[kind], 192 * 1024, env)
                    if not ok:
                        raise SystemExit("bench footprint: %s/%s did not run in 192 KB: %s" % (model, kind, got))
                    used.append(got)
                    say("%s model, %s: run %d/3 at 192 KB: %.1f KB in use while connected" % (model, kind, i + 1,
                                                                                             got / 1024))
                say("%s model, %s: the smallest heap for the whole session (a search)" % (model, kind))
                peak = bench.smallest_heap(str(exe[kind]), trees[kind], env, 8 * 1024, 160 * 1024)
                rows.append((model, kind, used, peak))
    finally:
        bench.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print("Python heap of the whole session (build/micropython-32: 32-bit, MicroPython's bare-metal mbed TLS config): "
          "peak = the smallest -X heapsize it runs in; in use = the sample app's gc.mem_alloc() while connected, "
          "median (min..max) of 3 runs")
    print("  %-6s %-8s %10s %24s  %s" % ("model", "firmware", "peak KB", "in use connected KB", "left for an app"))
    for model, kind, used, peak in rows:
        board = BOARD_HEAP[model]
        print("  %-6s %-8s %10s %24s  %s" % (
            model, kind, "%.0f" % (peak / 1024) if peak else "> 160", _stats.spread([u / 1024 for u in used]),
            "%.0f KB of %s's %d KB" % ((board - peak) / 1024, "an ESP32-WROOM without PSRAM" if model == "esp32"
                                       else "a Pico W", board // 1024) if peak else "-"))


if __name__ == "__main__":
    sys.exit(run())
