"""The firmware's size in a board's flash.

- The .mpy tree `upyhub build` makes (every device module, umqtt.simple, the unix board module, the sample
  app), compiled at each mpy-cross optimisation level (build.py's OPT is the one used).
- The code a connected session needs: the modules the firmware imports from boot until it is connected,
  has sent telemetry, answered a direct method and taken a desired property (recorded live, by wrapping
  __import__, on the unix port), as .mpy bytes at each level.
- Frozen into a Cortex-M3 image (build/qemu, tools/setup/qemu.sh: Thumb-2, what a Pico W build's frozen
  modules are): the frozen modules' bytes, the session's modules among them, and what they share (string
  and name tables, which cannot be split by module).
For comparison: the Azure Embedded C SDK's IoT Hub client is about 28.7 KB of flash (its hub client only,
without MQTT or TLS).
"""
import pathlib
import re
import shutil
import subprocess
import tempfile
import threading
import time

from upyhub import build, paths, sim
from upyhub.bench import _hub, _stats

LEVELS = (0, 1, 2, 3)
QEMU_FROZEN = paths.BUILD / "qemu" / "frozen_content.o"

# Inserted before the firmware boots (where the simulated board's boot code sets up the hub's address):
# every module imported from here on is printed once.
RECORDER = """import builtins
_seen = set()
_import = builtins.__import__
def _recording(name, *a):
    m = _import(name, *a)
    names = [name] + [name + "." + x for x in (a[2] if len(a) > 2 and isinstance(a[2], (tuple, list)) else ())]
    for n in names:
        if n not in _seen:
            _seen.add(n)
            print("IMPORTED " + n)
    return m
builtins.__import__ = _recording
"""


def session_modules():
    """Module names (iothub.x, app, board, umqtt.simple) the firmware imports through a connected session."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="upyhub-bench-flash-"))
    hub = proc = None
    lines = []
    try:
        hub, _ = _hub.start(tmp / "hub", what="bench flash")
        hostname, host, port, service, ca = sim.hub_info(tmp / "hub")
        key = service.put_device("flash-1")["authentication"]["symmetricKey"]["primaryKey"]
        flash = tmp / "flash"
        sim.write_flash(flash, hostname=hostname, device_id="flash-1", device_key=key, ca_pem=ca, port=port,
                        gateway=host, telemetry_interval=1)
        argv, env, _ = sim.command(flash, confine=False)
        at = argv[-1].index("_hosts = ")
        argv[-1] = argv[-1][:at] + RECORDER + argv[-1][at:]
        proc = subprocess.Popen(argv, env=env, cwd=str(flash), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        threading.Thread(target=lambda: [lines.append(x.strip()) for x in proc.stdout], daemon=True).start()

        def wait(cond, what):
            deadline = time.monotonic() + 60
            while not cond():
                if time.monotonic() > deadline:
                    raise SystemExit("bench flash: no %s within 60 s:\n%s" % (what, "\n".join(lines[-20:])))
                time.sleep(0.1)

        wait(lambda: any("iothub: connected" in x for x in lines), "connection")
        wait(lambda: len(service.telemetry("flash-1")) >= 2, "telemetry")
        service.invoke_method("flash-1", "ping", {}, timeout=30)
        service.update_twin("flash-1", {"telemetry_interval": 2})
        wait(lambda: any("telemetry every 2 s" in x for x in lines), "desired property")
    finally:
        sim.stop(proc)
        sim.stop(hub, 30)
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted({x.split()[1] for x in lines if x.startswith("IMPORTED ")})


def _mpy_sizes(level, out):
    """{module name: .mpy bytes} of the board tree compiled at -O<level>."""
    sizes = {}
    for src, rel in build.sources("unix"):
        if rel.name in build.SOURCE_ONLY:
            continue
        name = rel.relative_to("lib").with_suffix("").as_posix()
        dest = out / ("%d-%s.mpy" % (level, name.replace("/", ".")))
        build.mpy_cross(src, dest, name=name + ".py", opt=level)
        sizes[name.replace("/", ".")] = dest.stat().st_size
    return sizes


def frozen_sizes():
    """({module: bytes of its own sections}, bytes shared by all) of build/qemu's frozen modules (Thumb-2)."""
    if not QEMU_FROZEN.exists() or not shutil.which("arm-none-eabi-objdump"):
        return None
    out = subprocess.run(["arm-none-eabi-objdump", "-h", str(QEMU_FROZEN)], capture_output=True, text=True).stdout
    own, shared = {}, 0
    for line in out.splitlines():
        f = line.split()
        if len(f) < 7 or not f[0].isdigit() or f[1] in (".comment", ".ARM.attributes"):
            continue
        size = int(f[2], 16)
        # frozen_content.c names each module's objects after it: ..._iothub_session_..., ..._umqtt_simple_...
        m = re.search(r"_(iothub_[a-z0-9]+|umqtt_simple|app)(_|$)", f[1])
        if m:
            name = m.group(1).replace("_", ".", 1)
            own[name] = own.get(name, 0) + size
        else:
            shared += size
    return own, shared


def run():
    _stats.progress("flash", "recording the modules a connected session imports")
    imported = {"iothub.__init__" if m == "iothub" else m for m in session_modules()}
    _stats.progress("flash", "compiling the tree at -O0..-O3")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="upyhub-bench-mpy-"))
    try:
        sizes = {level: _mpy_sizes(level, tmp) for level in LEVELS}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    needed = sorted(imported & set(sizes[0]))  # modules of the tree (not names imported from them, not built-ins)
    print("The .mpy tree (upyhub build; build.py uses -O%d), bytes" % build.OPT)
    print("  %-40s %s" % ("", " ".join("%9s" % ("-O%d" % lv) for lv in LEVELS)))
    for label, names in (("whole tree (%d modules)" % len(sizes[0]), list(sizes[0])),
                         ("a connected session's modules (%d)" % len(needed), needed),
                         ("  of which iothub.*", [n for n in needed if n.startswith("iothub.")])):
        print("  %-40s %s" % (label, " ".join("%9d" % sum(sizes[lv].get(n, 0) for n in names) for lv in LEVELS)))
    print("  the session's modules: %s" % ", ".join(needed))
    print("  not needed by a session: %s" % ", ".join(sorted(set(sizes[0]) - set(needed))))
    frozen = frozen_sizes()
    if frozen is None:
        print("Frozen (Thumb-2): build/qemu is missing (make setup on Debian builds it)")
        return
    own, shared = frozen
    session_own = sum(v for k, v in own.items() if k in needed)
    print("Frozen into the Cortex-M3 image (build/qemu, Thumb-2, the modules of boards/manifest_common.py and "
          "umqtt.simple), bytes of flash")
    print("  all frozen modules: %d (%d in each module's own code and constants, %d shared: strings, names)"
          % (sum(own.values()) + shared, sum(own.values()), shared))
    print("  a connected session's modules: %d of their own, with the shared tables at most %d"
          % (session_own, session_own + shared))
    print("  per module: %s" % ", ".join("%s %d" % kv for kv in sorted(own.items(), key=lambda kv: -kv[1])))
    print("  (Azure Embedded C SDK's IoT Hub client, for comparison: about 28.7 KB, MQTT and TLS not included)")
