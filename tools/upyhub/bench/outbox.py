"""The flash outbox (lib/iothub/outbox.py, config `outbox: flash`) under telemetry, on a real littlefs.

Flash: the firmware's session sends MESSAGES QoS 1 messages to the local hub, with `inflight` 1 and 8 (a
new message whenever the window has room: a device whose telemetry keeps up with the hub), its whole flash (config, secrets, roots, outbox) on littlefs 2 (MicroPython's VfsLfs2, prog size 256 as
the rp2 port mounts it) on a 1 MB block device of 4 KB blocks, like a board's flash, that counts what
littlefs asks of it: block writes (program operations) and the bytes they carry, block erases. Counted
from the first message of the run to the last PUBACK, per message. RUNS runs of each, in turn.

Heap: what 8 messages in flight cost, on the board-faithful 32-bit port in both memory models, for the
.mpy tree and the frozen build: the heap in use (gc.mem_alloc() after a collection) while the session
has 8 messages published and not acknowledged, against the same connection with none in flight.
"""
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile

from upyhub import paths, sim
from upyhub.bench import _blockdev, _hub, _stats

MESSAGES = 1000
BODY = '{"temperature":21.50,"seq":%d}'
HEAP_SAMPLES = 5

# The flash folder's files copied onto littlefs, then the session on it (/lfs is its root).
LFS = _blockdev.RAM_FLASH + """
import os, vfs
flash = RAMFlash(256, 4096)
vfs.VfsLfs2.mkfs(flash)
vfs.mount(vfs.VfsLfs2(flash, progsize=256), "/lfs")
def copy(src, dst):
    for name, kind, *_ in os.ilistdir(src):
        if kind == 0x4000:
            os.mkdir(dst + "/" + name)
            copy(src + "/" + name, dst + "/" + name)
        elif not name.startswith("."):
            with open(src + "/" + name, "rb") as a, open(dst + "/" + name, "wb") as b:
                b.write(a.read())
copy(%r, "/lfs")
"""

FLASH_RUN = LFS + """
import time
from iothub import transport, config
transport.reserve()
cfg, sec = config.load("/lfs")
cfg["inflight"] = %d
from iothub.session import Session
trouble = []  # a lost connection or an outbox complaint fails the run: the count would not be the steady one
s = Session(cfg, sec, root="/lfs", log=lambda m: trouble.append(m) if m.startswith(("connection lost", "outbox"))
            else None)
s.send('%s' %% 0)
while s.pending() or not s.connected:
    s.poll(5)
flash.writes = flash.written = flash.erases = 0
deadline = time.ticks_add(time.ticks_ms(), 60000)
late = lambda: time.ticks_diff(deadline, time.ticks_ms()) < 0
sent = 0
for i in range(1, %d + 1):
    while s.pending() >= cfg["inflight"] and not trouble and not late():  # a new one as the window has room
        s.poll(5)
    if trouble or late():
        break
    s.send('%s' %% i)
    sent = i
    s.poll(0)
while s.pending() and not trouble and not late():
    s.poll(5)
if trouble or s.pending():
    print("FAILED", trouble[0] if trouble else "after 60 s, %%d sent, %%d of them not acknowledged" %% (sent, s.pending()))
else:
    print("FLASH", flash.writes, flash.written, flash.erases)
s.close()
"""

HEAP_RUN = """
import gc
import board
from iothub import transport
transport.reserve(getattr(board, "TLS_ROOM", None))
from iothub import config
cfg, sec = config.load(board.flash_root())
from iothub.session import Session
s = Session(cfg, sec, root=board.flash_root(), log=lambda m: None)
s.send('%s' %% 0)
while s.pending() or not s.connected:
    s.poll(5)
seq = 0
idle, busy = [], []
import time
deadline = time.ticks_add(time.ticks_ms(), 60000)
while len(busy) < %d and time.ticks_diff(deadline, time.ticks_ms()) > 0:
    gc.collect()
    idle.append(gc.mem_alloc())
    for i in range(8):
        seq += 1
        s.send('%s' %% seq)
    s.poll(0)  # publishes up to `inflight` (8) and returns before their PUBACKs are read
    if len(s._inflight) == 8:
        gc.collect()
        busy.append(gc.mem_alloc())
    while s.pending() and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        s.poll(5)
print("HEAP", " ".join(map(str, idle[:len(busy)])), "|", " ".join(map(str, busy)))
s.close()
"""


def _run(argv, env, what):
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    if p.returncode != 0:
        raise SystemExit("bench outbox: %s failed: %s" % (what, (p.stderr.strip().splitlines() or ["?"])[-1]))
    return p.stdout


def run():
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="upyhub-bench-outbox-"))
    hub = None
    try:
        _stats.progress("outbox", "starting a local hub")
        hub, _ = _hub.start(tmp / "hub", what="bench outbox")
        hostname, host, port, service, ca = sim.hub_info(tmp / "hub")
        key = service.put_device("bench-outbox")["authentication"]["symmetricKey"]["primaryKey"]
        flash = tmp / "flash"
        sim.write_flash(flash, hostname=hostname, device_id="bench-outbox", device_key=key, ca_pem=ca, port=port,
                        gateway=host)
        tree = pathlib.Path(os.environ.get(sim.TREE_ENV) or paths.BUILD / "mpy")  # UPYHUB_TREE: another build
        if os.environ.get(sim.TREE_ENV):
            _stats.progress("outbox", "the device tree: %s" % tree)
        env = dict(os.environ, MICROPYPATH=str(tree / "lib"), UPYHUB_FLASH=str(flash))
        env.pop("MP32_MBEDTLS_ALLOC", None)
        counts = {}

        def flash_run(inflight):
            def measure():
                out = _run([paths.micropython(), "-c", FLASH_RUN % (str(flash), inflight, BODY, MESSAGES, BODY)],
                           env, "the flash run")
                if "FAILED" in out:
                    raise _stats.Failed(out.split("FAILED", 1)[1].strip().splitlines()[0])
                writes, written, erases = map(int, out.split("FLASH")[1].split())
                counts.setdefault(inflight, []).append((writes, written, erases))
                return written / MESSAGES
            return measure

        written = _stats.interleaved("outbox flash", [("inflight 1", flash_run(1)), ("inflight 8", flash_run(8))],
                                     fmt="%.0f bytes/message")
        heaps = []
        for build, exe in (("mpy", paths.BUILD / "micropython-32"), ("frozen", paths.BUILD / "micropython-32-frozen")):
            if not exe.exists():
                continue
            for model, extra in (("esp32", {"MP32_MBEDTLS_ALLOC": "libc"}), ("rp2", {})):
                _stats.progress("outbox", "heap with 8 in flight: %s, %s model" % (build, model))
                e = dict(env, **extra)
                if build == "frozen":
                    e.pop("MICROPYPATH")
                out = _run([str(exe), "-c", HEAP_RUN % (BODY, HEAP_SAMPLES, BODY)], e, "the heap run")
                idle, busy = (list(map(int, part.split())) for part in out.split("HEAP")[1].split("|"))
                if not busy:
                    raise SystemExit("bench outbox: the session never had 8 messages in flight (%s, %s)" % (build, model))
                heaps.append((build, model, idle, busy))
    finally:
        sim.stop(hub, 30)
        shutil.rmtree(tmp, ignore_errors=True)
    print("Flash outbox on littlefs (1 MB, 4 KB blocks, prog size 256), %d QoS 1 messages of %d bytes per run, "
          "%d runs interleaved; counted from the first message to the last PUBACK" % (MESSAGES, len(BODY % 100),
                                                                                     _stats.RUNS))
    _stats.table("", "bytes written per message", written, fmt="%.0f")
    for inflight, rows in sorted(counts.items()):
        ops = [w / MESSAGES for w, _, _ in rows]
        erases = [e / MESSAGES for _, _, e in rows]
        print("  inflight %d: write operations per message %s; block erases per message %s"
              % (inflight, _stats.spread(ops, "%.2f"), _stats.spread(erases, "%.3f")))
    print("Heap with 8 messages in flight (build/micropython-32, %d samples each; KB, median (min..max))" % HEAP_SAMPLES)
    for build, model, idle, busy in heaps:
        print("  %-6s %-5s model: none in flight %s, 8 in flight %s, difference %.1f KB"
              % (build, model, _stats.spread([x / 1024 for x in idle]), _stats.spread([x / 1024 for x in busy]),
                 (statistics.median(busy) - statistics.median(idle)) / 1024))
