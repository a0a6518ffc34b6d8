"""The real RP2040 image on the emulated Pico ("chip": build/rp2's firmware.bin, MicroPython 1.25's rp2 port with
the package frozen, on rp2040js at 125 MHz, its network a PPP modem) next to the same work in the RP2040 memory
model ("model": build/micropython-32-frozen, the 32-bit unix port with a board's mbed TLS config and the same
package frozen in, -X heapsize=HEAP). RUNS rounds, chip then model; a chip round boots a fresh flash image, a model round
runs fresh processes. Measured, each side by side:
  token      iothub.sas.device_token(host, id, key, expiry=...) N times (after one to warm up). chip: emulated
             microseconds a token (CPU cycles executed, from the emulator's info block at 0x40070000, at
             125 MHz); model: host wall microseconds (time.ticks_us). Also the chip's host wall time a token
             (an exec of N tokens less an exec of none, / N).
  handshake  iothub.handshake.wrap_socket(sock, cert_reqs=CERT_REQUIRED, cadata=<the hub's CA>,
             server_hostname=<its hostname>) after a plain TCP connect to the local hub's MQTT port (served
             with --handshake-timeout 120), each build with its own mbed TLS, parsing the roots into a new
             context included. chip: emulated ms of CPU (cycles / 125e3), emulated elapsed ms (time.ticks_ms:
             waits for the network too) and host wall ms; model: host wall ms.
  heap       the session, provisioned as a user does (`upyhub provision` through the chip's serial port, the
             hub at 10.0.2.2 through the modem) and booted: the app's "heap H used" (gc.mem_alloc after a
             collection, one a telemetry message) once connected, median of the round. model: the same
             firmware on micropython-32 (sim.write_flash + sim.start), WINDOW messages.
  flash      chip only (the model has no flash driver): sector erases and bytes programmed on the chip's
             littlefs per telemetry message, Pico.stats() around >= WINDOW messages reaching the hub
             (telemetry every 1 s, set through the twin).
And the chip's free heap after boot (fresh flash, gc.collect(); gc.mem_free()), once a round; and once, the
session's peak: the smallest heap in 2 KB steps in which the firmware boots, connects (PPP, SNTP, TLS, CONNECT,
subscriptions, twin) and sends PEAK_MESSAGES telemetry messages without a line about memory. chip: the free heap
main.py starts with, held in one piece by upyhub.mpr.HEAP_CAP appended to its boot.py (the emulation is
deterministic: one search); model: -X heapsize, which also holds what boots before main.py.
The chip's cycles are its own work at its own speed, whatever the host's: PPP and lwIP handling the handshake's
bytes included, waits (WFE) not. Its host wall times are what emulating it costs."""
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from upyhub import mpr, paths, pico, ppplink, sas, sim
from upyhub.bench import _hub, _stats

RUNS = 3
N = 50
WINDOW = 10  # telemetry messages
HEAP = "223K"  # the chip's GC heap: 217.6 KB (micropython.mem_info() total after boot)
HZ = 125e6
MP32, MPY = paths.BUILD / "micropython-32-frozen", paths.BUILD / "mpy"
PEAK_MESSAGES = 2
PEAK_STEP = 2048
BOOT_PY = (paths.ROOT / "firmware" / "boot.py").read_text()
HOST, DEVICE_ID, MODEL_ID = "myhub.azure-devices.net", "sensor-0042", "bench-model"

CHIP_CLOCK = """import machine
_m = machine.mem32
assert _m[0x40070008] == 0x31554d45, "not the emulated Pico (no EMU1 info block)"
def now():
    lo = _m[0x40070000] & 0xffffffff  # latches the high word
    return (_m[0x40070004] & 0xffffffff) << 32 | lo
def since(t):
    return now() - t
"""
MODEL_CLOCK = """import time
now = time.ticks_us
def since(t):
    return time.ticks_diff(time.ticks_us(), t)
"""
BOOTED = """import gc, machine, time
gc.collect()
print("bench", gc.mem_free())
_t = time.gmtime(%d)  # then the clock from the host's, as SNTP sets it (a Pico has no RTC battery)
machine.RTC().datetime((_t[0], _t[1], _t[2], _t[6] + 1, _t[3], _t[4], _t[5], 0))
"""
TOKENS = """from iothub import sas
host, dev, key, n = %r, %r, %r, %d
sas.device_token(host, dev, key, expiry=2000000000)
t0 = now()
for i in range(n):
    sas.device_token(host, dev, key, expiry=2000000000 + i)
print("bench", since(t0))
"""
HANDSHAKE = """import gc, socket, time
from iothub import handshake
ca, addr, port, name = %r, %r, %d, %r
s = socket.socket()
s.connect(socket.getaddrinfo(addr, port)[0][-1])
gc.collect()
print("T0")
t0, m0 = now(), time.ticks_ms()
t = handshake.wrap_socket(s, cert_reqs=handshake.CERT_REQUIRED, cadata=ca, server_hostname=name)
d, ms = since(t0), time.ticks_diff(time.ticks_ms(), m0)
print("T1")
t.close()
print("bench", d, ms)
"""
HEAP_LINE = re.compile(r"app: telemetry \d+ queued as .*heap (\d+) used\)")
SHORT = re.compile(r"memory", re.I)  # every line the firmware prints about running short of heap says so


def _numbers(out):
    for line in reversed(out.splitlines()):
        if line.startswith("bench "):
            return [int(x) for x in line.split()[1:]]
    raise _stats.Failed("no figure printed: %s" % out[-300:])


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise _stats.Failed("no %s within %d s" % (what, timeout))
        time.sleep(0.25)


class Round:
    """One side's figures of one round (name -> number), printed as one line; a part that fails is left out."""
    UNITS = {"free": "%.1f KB free after boot", "token": "%.0f us/token", "token_wall": "host wall %.0f us/token",
             "tls_cpu": "TLS %.0f ms CPU", "tls_elapsed": "%.0f ms elapsed", "tls_wall": "%.0f ms host wall",
             "heap": "heap %.1f KB used", "erases": "%.2f erases/msg", "bytes": "%.0f B programmed/msg"}

    def __init__(self, side):
        self.side, self.v = side, {}

    def __str__(self):
        return ", ".join(self.UNITS[k] % v for k, v in self.v.items()) or "nothing measured"

    def part(self, what, fn):
        try:
            self.v.update(fn())
        except Exception as e:  # the round's other figures still count
            _stats.progress("pico", "%s: %s FAILED: %s" % (self.side, what, e if isinstance(e, _stats.Failed)
                                                            else repr(e)))


class Bench:
    def __init__(self, tmp, data, info):
        self.tmp, self.data, self.key, self.rounds = tmp, data, sas.new_key(), 0
        self.hostname, self.host, self.port, self.service, self.ca = sim.hub_info(data)
        self.model_key = self.service.put_device(MODEL_ID)["authentication"]["symmetricKey"]["primaryKey"]
        self.forward = {p: (self.host, p) for p in (self.port, info.get("dps_port")) if p}

    # --- the chip ---
    def chip(self):
        self.rounds += 1
        fig, image = Round("chip"), self.tmp / "pico.img"
        image.unlink(missing_ok=True)
        board = pico.Pico(image, forward=self.forward)
        try:
            port = board.start(timeout=60)
            t = SerialTransport(port, 115200)
            try:
                t.enter_raw_repl(soft_reset=False, timeout_overall=30)
                fig.part("free heap", lambda: {"free": self._exec(t, BOOTED % time.time())[0] / 1024})
                fig.part("token", lambda: self._chip_tokens(t))
                fig.part("handshake", lambda: self._chip_handshake(t))
            finally:
                t.exit_raw_repl()
                t.close()  # `upyhub provision` takes the port
            fig.part("session", lambda: self._chip_session(board, port, "bench-pico-%d" % self.rounds))
        finally:
            board.close()
        return fig

    @staticmethod
    def _exec(t, code, timeout=120, consumer=None):
        try:
            out, err = t.exec_raw(code, timeout=timeout, data_consumer=consumer)
        except TransportError as e:
            raise _stats.Failed("the chip did not finish: %s" % e)
        if err:
            raise _stats.Failed(err.decode(errors="replace").strip().splitlines()[-1])
        return None if consumer else _numbers(out.decode(errors="replace"))

    def _chip_tokens(self, t):
        wall = {}
        for n in (0, N):
            t0 = time.monotonic()
            cycles = self._exec(t, CHIP_CLOCK + TOKENS % (HOST, DEVICE_ID, self.key, n))[0]
            wall[n] = time.monotonic() - t0
        return {"token": cycles / N / HZ * 1e6, "token_wall": (wall[N] - wall[0]) / N * 1e6}

    def _chip_handshake(self, t):
        self._exec(t, "import board\nboard.connect_network(None, None)\nprint('bench', 1)")
        out, marks = bytearray(), {}

        def consume(b):  # the chip's output as it comes: the host's time of the marks around the handshake
            out.extend(b)
            for m in (b"T0\r\n", b"T1\r\n"):
                if m not in marks and out.endswith(m):
                    marks[m] = time.monotonic()

        self._exec(t, CHIP_CLOCK + HANDSHAKE % (self.ca, ppplink.HOST_ALIAS, self.port, self.hostname),
                   timeout=180, consumer=consume)
        cycles, ms = _numbers(out.decode(errors="replace"))
        wall = marks[b"T1\r\n"] - marks[b"T0\r\n"]
        return {"tls_cpu": cycles / HZ * 1e3, "tls_elapsed": ms, "tls_wall": wall * 1e3}

    def _chip_session(self, board, port, device_id):
        at = self._provision(board, port, device_id)
        self.service.update_twin(device_id, {"telemetry_interval": 1})
        board.wait_console(b"app: telemetry every 1 s", 120, at)
        n0, s0 = len(self.service.telemetry(device_id)), board.stats()
        _wait(lambda: len(self.service.telemetry(device_id)) >= n0 + WINDOW, 300, "%d messages at the hub" % WINDOW)
        s1, n = board.stats(), len(self.service.telemetry(device_id)) - n0
        used = [int(m.group(1)) for m in HEAP_LINE.finditer(board.console()[at:].decode(errors="replace"))]
        return {"heap": statistics.median(used) / 1024, "erases": (s1["sectorsErased"] - s0["sectorsErased"]) / n,
                "bytes": (s1["bytesProgrammed"] - s0["bytesProgrammed"]) / n}

    def _provision(self, board, port, device_id):
        """`upyhub provision` through the chip's serial port; returns the console offset once main.py connected."""
        boots = board.boots
        p = subprocess.run([sys.executable, "-m", "upyhub", "provision", port, "--board", "rp2_pico_ppp",
                            "--device-id", device_id, "--data", str(self.data), "--device-gateway",
                            ppplink.HOST_ALIAS, "--ntp", ppplink.HOST_ALIAS, "-o", "json"],
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise _stats.Failed("upyhub provision: %s" % (p.stderr.strip().splitlines() or ["?"])[-1])
        _wait(lambda: board.boots > boots, 60, "reset after provisioning")  # it resets: main.py connects
        return board.wait_console(b"iothub: connected to %s as %s" % (self.hostname.encode(), device_id.encode()),
                                  300, board.last_boot)

    # --- the session's peak, once each ---
    def chip_peak(self):
        """Smallest free heap main.py may start with for a session (see the module's header), in bytes."""
        image, device_id = self.tmp / "peak.img", "bench-pico-peak"
        image.unlink(missing_ok=True)
        board = pico.Pico(image, forward=self.forward)
        try:
            port = board.start(timeout=60)
            self._provision(board, port, device_id)
            self.service.update_twin(device_id, {"telemetry_interval": 1})  # kept in the twin for every boot

            def fits(heap):
                t = SerialTransport(port, 115200)
                try:
                    t.enter_raw_repl(soft_reset=False, timeout_overall=60)  # stops main.py
                    self._exec(t, "with open('/boot.py', 'w') as f:\n    f.write(%r)\nprint('bench', 1)"
                               % (BOOT_PY + mpr.HEAP_CAP % heap))
                    t.exit_raw_repl()
                finally:
                    t.close()
                boots = board.boots
                board.power("cycle")
                _wait(lambda: board.boots > boots, 60, "boot")
                return self._session_ran(lambda: board.console()[board.last_boot:].decode(errors="replace"), 240)

            return _smallest(fits, 32 * 1024, 160 * 1024, "chip")
        finally:
            board.close()

    def model_peak(self):
        flash = self.tmp / "model-peak"

        def fits(heap):
            shutil.rmtree(flash, ignore_errors=True)
            sim.write_flash(flash, hostname=self.hostname, device_id=MODEL_ID, device_key=self.model_key,
                            ca_pem=self.ca, port=self.port, gateway=self.host, telemetry_interval=1)
            dev = sim.start(flash, tree=MPY, heapsize=heap, executable=str(MP32))
            lines = []
            threading.Thread(target=lambda: [lines.append(x) for x in dev.stdout], daemon=True).start()
            try:
                return self._session_ran(lambda: "".join(lines), 60, dev)
            finally:
                sim.stop(dev)

        return _smallest(fits, 16 * 1024, 160 * 1024, "model")

    @staticmethod
    def _session_ran(console, timeout, proc=None):
        """True once the firmware connected and sent PEAK_MESSAGES messages; False on a line about memory, an
        exit or a timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = console()
            if SHORT.search(text):
                return False
            at = text.find("iothub: connected")
            if at >= 0 and len(HEAP_LINE.findall(text[at:])) >= PEAK_MESSAGES:
                return True
            if proc is not None and proc.poll() is not None:
                return False
            time.sleep(0.5)
        return False

    # --- the model ---
    def model(self):
        fig = Round("model")
        fig.part("token", lambda: {"token": self._model(TOKENS % (HOST, DEVICE_ID, self.key, N))[0] / N})
        fig.part("handshake", lambda: {
            "tls_wall": self._model(HANDSHAKE % (self.ca, self.host, self.port, self.hostname))[0] / 1e3})
        fig.part("session", self._model_session)
        return fig

    @staticmethod
    def _model(code):
        p = subprocess.run([str(MP32), "-X", "heapsize=%s" % HEAP, "-c", MODEL_CLOCK + code], capture_output=True,
                           text=True, timeout=120, env=dict(os.environ, MICROPYPATH=".frozen"))
        if p.returncode != 0:
            raise _stats.Failed((p.stderr.strip().splitlines() or ["?"])[-1])
        return _numbers(p.stdout)

    def _model_session(self):
        flash = self.tmp / "model-flash"
        shutil.rmtree(flash, ignore_errors=True)
        sim.write_flash(flash, hostname=self.hostname, device_id=MODEL_ID, device_key=self.model_key, ca_pem=self.ca,
                        port=self.port, gateway=self.host, telemetry_interval=1)
        dev = sim.start(flash, tree=MPY, heapsize=HEAP, executable=str(MP32))
        lines = []
        threading.Thread(target=lambda: [lines.append(x.rstrip()) for x in dev.stdout], daemon=True).start()

        def used():  # the heap lines after the first connection
            at = next((i for i, x in enumerate(lines) if "iothub: connected" in x), len(lines))
            return [int(m.group(1)) for m in map(HEAP_LINE.search, lines[at:]) if m]

        try:
            _wait(lambda: len(used()) >= WINDOW, 180, "%d telemetry messages after connecting" % WINDOW)
            return {"heap": statistics.median(used()) / 1024}
        finally:
            sim.stop(dev)


def _table(title, unit, results, fmt):
    _stats.table(title, unit, results, fmt, label=40, runs=RUNS)


def _smallest(fits, lo, hi, what):
    """The smallest heap (bytes, PEAK_STEP apart) between lo (assumed too small) and hi that fits(heap)."""
    if not fits(hi):
        raise _stats.Failed("%s: the session does not run even in %d KB" % (what, hi // 1024))
    while hi - lo > PEAK_STEP:
        mid = (lo + hi) // 2 // PEAK_STEP * PEAK_STEP
        ok = fits(mid)
        _stats.progress("pico", "peak, %s: %d KB %s" % (what, mid // 1024, "runs" if ok else "too small"))
        lo, hi = (lo, mid) if ok else (mid, hi)
    return hi


def run():
    reason = pico.why_unavailable() or ppplink.why_unavailable() or (
        None if MP32.exists() and (MPY / "lib").is_dir() else "build/micropython-32 or build/mpy is missing")
    if reason:
        print("pico: skipped: %s" % reason)
        return
    tmp = Path(tempfile.mkdtemp(prefix="upyhub-bench-pico-"))
    proc = None
    try:
        # the TLS deadline the emulated chip needs
        proc, info = _hub.start(tmp / "hub", what="bench pico", extra=("--handshake-timeout", str(sim.PICO_HANDSHAKE_S)))
        b = Bench(tmp, tmp / "hub", info)
        got = _stats.interleaved("pico", [("chip", b.chip), ("model", b.model)], runs=RUNS, fmt="%s")
        peaks = {}
        for name, measure in (("chip", b.chip_peak), ("model", b.model_peak)):
            try:
                peaks[name] = measure()
            except _stats.Failed as e:
                _stats.progress("pico", "peak, %s: FAILED: %s" % (name, e))
    finally:
        sim.stop(proc, 30)
        shutil.rmtree(tmp, ignore_errors=True)

    def side(name, key):
        return [f.v[key] for f in got[name] if key in f.v]

    print("emulated Pico (chip: build/rp2 on rp2040js, 125 MHz) vs RP2040 memory model (model: "
          "build/micropython-32-frozen, -X heapsize=%s), %d rounds interleaved" % (HEAP, RUNS))
    cpu, model = "chip, emulated (CPU cycles at 125 MHz)", "model, host wall"
    tok = {cpu: side("chip", "token"), model: side("model", "token"),
           "chip, HOST WALL time (the emulator's)": side("chip", "token_wall")}
    _table("SAS device token for %s/%s, %d a run" % (HOST, DEVICE_ID, N), "us/token", tok, "%.0f")
    _stats.ratio(cpu, model, tok, "(the chip's time over the host's)")
    tls = {cpu: side("chip", "tls_cpu"), "chip, emulated elapsed (ticks_ms)": side("chip", "tls_elapsed"),
           "chip, HOST WALL time": side("chip", "tls_wall"), model: side("model", "tls_wall")}
    _table("TLS handshake with the local hub (handshake.wrap_socket after a TCP connect)", "ms", tls, "%.0f")
    _stats.ratio(cpu, model, tls, "(the chip's CPU time over the host's)")
    heap = {"chip": side("chip", "heap"), "model": side("model", "heap")}
    _table("heap in use while connected (the app's gc.mem_alloc a message, median of a round)", "KB", heap, "%.1f")
    _stats.ratio("chip", "model", heap)
    _table("flash a telemetry message on the chip's littlefs, over >= %d messages at the hub a round (chip only: "
           "the model has no flash driver)" % WINDOW, "a message", {"chip, sector erases": side("chip", "erases")},
           "%.2f")
    _table("", "bytes a message", {"chip, bytes programmed": side("chip", "bytes")}, "%.0f")
    _table("free heap after boot on the chip (fresh flash; gc.collect(); gc.mem_free())", "KB",
           {"chip": side("chip", "free")}, "%.1f")
    print("the session's peak heap: the smallest in %d KB steps that boots, connects and sends %d messages "
          "(one search each)" % (PEAK_STEP // 1024, PEAK_MESSAGES))
    for name, what in (("chip", "free heap main.py starts with"), ("model", "-X heapsize")):
        print("  %-6s %s" % (name, "%d KB (%s)" % (peaks[name] // 1024, what) if name in peaks else "not measured"))
    if len(peaks) == 2:
        print("  ratio, chip / model: %.2fx" % (peaks["chip"] / peaks["model"]))
