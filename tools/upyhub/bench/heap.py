"""The session's heap scenario, RUNS times in a row, in the RP2040 memory model of the board-faithful
32-bit port (build/micropython-32: every mbed TLS allocation on the Python heap, 112 KB of heap: 1 KB
above the smallest the session runs in, tighter than the 116 KB tests/firmware/test_session_heap.py holds
the .mpy build to). Each run boots the real firmware (.mpy),
connects over TLS, sends telemetry, answers a method and a desired property, then the hub restarts
and the device reconnects on a heap that has been in use for a while. Counted: reconnect attempts
that failed for lack of memory (the target is 0: the room the session holds for the TLS buffers is
what makes a fragmented heap reconnect), and the heap in use once connected, as min/median/max."""
import pathlib
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time

from upyhub import paths, sim
from upyhub.bench import _hub

RUNS = 20
HEAP = "112K"
DEVICE = "heap-bench"


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def run():
    exe = paths.BUILD / "micropython-32"
    if not exe.exists():
        print("  heap: build/micropython-32 is missing (make setup): skipped")
        return
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="upyhub-bench-heap-"))
    tree = tmp / "mpy"
    subprocess.run([str(paths.ROOT / ".venv" / "bin" / "upyhub"), "build", "--board", "unix", "--out", str(tree),
                    "--quiet"], check=True)
    data = tmp / "hub"
    proc, info = _hub.start(data, what="bench heap")
    enomem, reconnected, connected_heap = 0, 0, []
    try:
        hostname, host, port, service, ca = sim.hub_info(data)
        key = service.put_device(DEVICE)["authentication"]["symmetricKey"]["primaryKey"]
        for i in range(1, RUNS + 1):
            flash = tmp / "flash"
            shutil.rmtree(flash, ignore_errors=True)
            sim.write_flash(flash, hostname=hostname, device_id=DEVICE, device_key=key, ca_pem=ca, port=port,
                            gateway=host, telemetry_interval=1, retry_cap=4)
            dev = sim.start(flash, tree=tree, heapsize=HEAP, executable=str(exe))
            lines = []
            threading.Thread(target=lambda d=dev: [lines.append(x.rstrip()) for x in d.stdout], daemon=True).start()
            try:
                _wait(lambda: sum("iothub: connected" in x for x in lines) >= 1, 60, "connection")
                n0 = len(service.telemetry(DEVICE))
                _wait(lambda: len(service.telemetry(DEVICE)) >= n0 + 2, 60, "telemetry")
                service.invoke_method(DEVICE, "ping", {"run": i}, timeout=30)
                service.update_twin(DEVICE, {"telemetry_interval": 1 + i % 2})
                _wait(lambda: any("app: telemetry every" in x for x in lines), 60, "desired property")
                used = [int(m.group(1)) for m in (re.search(r"heap (\d+) used", x) for x in lines) if m]
                connected_heap.append(max(used))
                # the hub restarts: the device reconnects on the heap it has been using
                sim.stop(proc, 30)
                proc, info = _hub.start(data, port, "bench heap", info["https_port"])
                _wait(lambda: sum("iothub: connected" in x for x in lines) >= 2, 120, "reconnection")
                reconnected += 1
            except TimeoutError as e:
                print("  heap: run %d: no %s" % (i, e), flush=True)
            finally:
                sim.stop(dev)
            failed = sum("not enough memory" in x for x in lines)
            enomem += failed
            print("  heap: run %2d/%d: reconnected %s, %d attempt(s) short of memory, heap in use up to %.1f KB"
                  % (i, RUNS, "yes" if sum("iothub: connected" in x for x in lines) >= 2 else "NO", failed,
                     (connected_heap[-1] if connected_heap else 0) / 1024), flush=True)
    finally:
        sim.stop(proc, 30)
        shutil.rmtree(tmp, ignore_errors=True)
    print("RP2040 memory model (build/micropython-32, -X heapsize=%s, .mpy): %d runs of connect, telemetry, method, "
          "desired, hub restart, reconnect" % (HEAP, RUNS))
    print("  reconnected: %d of %d; reconnect attempts that failed for lack of memory: %d (target 0)"
          % (reconnected, RUNS, enomem))
    if connected_heap:
        print("  heap in use while connected (app's gc.mem_alloc), KB: min %.1f, median %.1f, max %.1f"
              % (min(connected_heap) / 1024, statistics.median(connected_heap) / 1024, max(connected_heap) / 1024))
