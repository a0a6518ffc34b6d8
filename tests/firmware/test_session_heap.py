"""The whole session from .mpy on a bounded heap, on a board-faithful build: connect over TLS,
telemetry acknowledged, a direct method, a desired property, a reconnect, more telemetry.

It runs on build/micropython-32 (tools/setup/micropython32.sh): the same MicroPython 1.25, built
32-bit (a board's object sizes) with MicroPython's own mbed TLS 3 board config: no HAVEGE state in
the TLS context (Debian's mbed TLS 2.28 puts 38 KB there), no PEM parser (the roots stay PEM on flash,
as provisioning writes them: transport hands mbed TLS one DER certificate at a time, as a Pico W
needs). Nothing is added to the budget. Two memory models:

- esp32: mbed TLS allocates outside MicroPython's heap (ESP-IDF's mbed TLS does): 80 KB. It was 64 KB
  before the library took on the flash outbox, bounded non-blocking I/O and root rotation (about 9 KB
  more code, which .mpy loads into RAM); the smallest heap it runs in is 74 KB (`python -m upyhub.bench
  footprint`). Frozen into the firmware, that code stays in flash: the frozen build is the way to a
  smaller budget.
- rp2: every mbed TLS allocation (16 KB record buffer, 4 KB out buffer, CA, handshake) comes from
  the Python heap, as MicroPython's bare-metal config does on RP2040: 116 KB. The smallest heap it
  runs in is 111-112 KB (searches of the footprint benchmark; how fragmented the heap is at the
  reconnect varies), held with the same few KB of room as the frozen budgets below. The board
  module's TLS_ROOM makes the session hold the buffers' 23 KB in one piece from boot and hand it to
  each handshake, so reconnects never depend on how fragmented the heap is.
"""
import json
import subprocess
import time

import pytest

from upyhub import build, sim

from fwtools import ROOT, Device

pytestmark = pytest.mark.slow

MP32 = ROOT / "build" / "micropython-32"
RP2_HEAP = "116K"
MODELS = {
    "esp32": ("80K", {"MP32_MBEDTLS_ALLOC": "libc"}),
    "rp2": (RP2_HEAP, {}),
}

# Frozen into the port (build/micropython-32-frozen, boards/unix/manifest.py: the list every board's
# manifest freezes): the bytecode stays in flash, the board's files are boot.py and main.py. The smallest
# heaps this session runs in, measured (`python -m upyhub.bench footprint`, several searches): 26-27 KB in
# the ESP32 model, 56-61 KB in the RP2040 model (the TLS record buffer's 16.7 KB in one piece among
# them; how fragmented the heap is at the reconnect varies). Held with 3 KB of room above the largest.
MP32_FROZEN = ROOT / "build" / "micropython-32-frozen"
FROZEN_HEAP = {"esp32": "30K", "rp2": "64K"}

BOARD_LIKE = """
import sys, gc, tls
gc.collect()
a = gc.mem_alloc()
c = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
gc.collect()
print(sys.maxsize, gc.mem_alloc() - a)
"""


@pytest.fixture(scope="module")
def mp32():
    if not MP32.exists():
        pytest.fail("build/micropython-32 is missing: run `make setup` (make test does it)")
    p = subprocess.run([str(MP32), "-c", BOARD_LIKE], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    maxsize, ctx = map(int, p.stdout.split())
    assert maxsize == 2**31 - 1, "not a 32-bit build"
    assert ctx < 8 * 1024, "TLS context of %d bytes: not the board's mbed TLS config" % ctx
    return MP32


@pytest.fixture(scope="module")
def frozen(mp32, tmp_path_factory):
    """(the frozen port, the files a board with it holds: boot.py, main.py and an empty /lib)."""
    if not MP32_FROZEN.exists():
        pytest.fail("build/micropython-32-frozen is missing: run `make setup` (make test does it)")
    return MP32_FROZEN, build.frozen_tree(tmp_path_factory.mktemp("frozen-board"))


@pytest.fixture
def start_device(request, device, mp32):
    """start_device(build, flash, heapsize): the firmware from .mpy in /lib (build/micropython-32) or frozen."""
    started = []

    def start(build, flash, heapsize):
        if build == "mpy":
            return device(flash, heapsize=heapsize, executable=mp32)
        exe, tree = request.getfixturevalue("frozen")
        started.append(Device(flash, tree, heapsize=heapsize, executable=exe))
        return started[-1]

    yield start
    for d in started:
        d.stop()


def _seqs(hub):
    return [json.loads(m["body"])["seq"] for m in hub.service.telemetry("heap-1")]


def _wait(cond, dev, timeout=60):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, dev.log()
        time.sleep(0.2)


def _board(hub, tmp_path, start_device, monkeypatch, model, build="mpy"):
    # "heap-1" on the local hub, booted in a memory model at its budget (from .mpy or frozen); connected.
    heap, env = MODELS[model]
    heap = heap if build == "mpy" else FROZEN_HEAP[model]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    key = hub.add_device("heap-1")
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=hub.hostname, device_id="heap-1", device_key=key, ca_pem=hub.ca_pem,
                    port=hub.mqtt_port, gateway=hub.host, telemetry_interval=1)
    dev = start_device(build, flash, heap)
    dev.wait_for(r"iothub: connected to %s as heap-1" % hub.hostname)
    return dev


@pytest.mark.parametrize("build", ["mpy", "frozen"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_session_on_board_sized_heap(hub, tmp_path, start_device, monkeypatch, model, build):
    dev = _board(hub, tmp_path, start_device, monkeypatch, model, build)
    _wait(lambda: len(_seqs(hub)) >= 3, dev)  # QoS 1: each acknowledged before the next goes
    assert hub.service.invoke_method("heap-1", "ping", {"x": 1}, timeout=30)[0] == 200
    hub.service.update_twin("heap-1", {"telemetry_interval": 2})
    dev.wait_for(r"app: telemetry every 2 s")
    seq = max(_seqs(hub))
    dev.wait_for(r"app: telemetry %d queued" % (seq + 2))
    hub.restart()  # a reconnect: a new TLS session and the certificate store loaded again
    dev.wait_for(r"iothub: connected to %s as heap-1" % hub.hostname, count=2, timeout=120)
    seq = max(_seqs(hub))
    _wait(lambda: max(_seqs(hub)) >= seq + 2, dev)
    assert hub.service.invoke_method("heap-1", "ping", {"x": 2}, timeout=30)[0] == 200
    log = dev.log()
    assert "MemoryError" not in log and "memory allocation failed" not in log and "ENOMEM" not in log, log
    assert "crashed" not in log, log


def _connects(dev):
    return len([x for x in dev.lines if "iothub: connected to" in x])


@pytest.mark.parametrize("model", sorted(MODELS))
def test_messages_within_azure_limits_never_take_the_device_offline(hub, tmp_path, start_device, monkeypatch, model):
    # A 60 KB C2D message (Azure allows 64 KB) and a 24 KB desired property (32 KB) at the board's heap
    # budget: handled if they fit, otherwise acknowledged, dropped and counted; either way telemetry goes on
    # over the same connection, and the hub does not send the C2D message again.
    dev = _board(hub, tmp_path, start_device, monkeypatch, model)
    _wait(lambda: len(_seqs(hub)) >= 2, dev)
    hub.service.send_c2d("heap-1", "c" * 60000, {})
    dev.wait_for(r"(app: c2d c{80}\.\.\. \(60000 bytes\)|iothub: c2d message of 60\d{3} bytes dropped: not enough free memory)")
    hub.service.update_twin("heap-1", {"blob": "d" * 24000})
    seq = max(_seqs(hub))
    _wait(lambda: max(_seqs(hub)) >= seq + 8, dev)  # eight more readings delivered after both
    assert _connects(dev) == 1, dev.log()
    dropped = [x for x in dev.lines if "dropped" in x]
    if dropped:  # what did not fit is counted on the twin
        _wait(lambda: hub.service.get_twin("heap-1")["properties"]["reported"].get("inboundDropped") == len(dropped), dev)
    assert len([x for x in dev.lines if "app: c2d c" in x or "c2d message of" in x]) == 1  # not sent again
    log = dev.log()
    assert "crashed" not in log and "connection lost" not in log and "Traceback" not in log, log


def test_token_renewals_at_the_budget_keep_the_tls_room(hub, tmp_path, mp32, device):
    # rp2 model from .mpy at its budget, a token of 60 s: each renewal is a new TLS session on a heap in use
    # since boot. The record buffer leaves a hole a little smaller than the block of the room it was put in;
    # the room is taken back at the size that fits, so the next handshake finds its 16.7 KB in one piece
    # (the room held at the old size was lost at the second renewal, and every handshake after it failed).
    key = hub.add_device("ren")
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=hub.hostname, device_id="ren", device_key=key, ca_pem=hub.ca_pem,
                    port=hub.mqtt_port, gateway=hub.host, telemetry_interval=2, token_ttl=60)
    dev = device(flash, heapsize=RP2_HEAP, executable=mp32)
    dev.wait_for(r"iothub: connected to %s as ren" % hub.hostname, count=4, timeout=240)  # 3 renewals
    log = dev.log()
    assert log.count("iothub: renewing token before it expires") == 3, log
    assert "not enough memory" not in log and "MemoryError" not in log and "board: reset" not in log, log


FRAGMENTING_APP = '''
import gc

def run(session, board, cfg):
    # Leave plenty of free heap, none of it in one piece: 512-byte holes between kept blocks.
    kept, holes = [], []
    try:
        while gc.mem_free() > 4096:
            kept.append(bytearray(480))
            holes.append(bytearray(480))
    except MemoryError:
        pass
    holes = None
    gc.collect()
    print("app: heap fragmented: %d bytes free" % gc.mem_free())
    while True:
        session.poll(100)
'''


def test_heap_too_fragmented_to_connect_resets_the_board(hub, tmp_path, device, mp32):
    # rp2 model: the handshake needs 16.7 KB in one piece. None is left: the session gives up after
    # memory_resets_after attempts and resets the board (the unix board exits 0 to be booted again).
    key = hub.add_device("frag-1")
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=hub.hostname, device_id="frag-1", device_key=key, ca_pem=hub.ca_pem,
                    port=hub.mqtt_port, gateway=hub.host, memory_resets_after=3, retry_cap=2)
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(FRAGMENTING_APP)
    dev = device(flash, heapsize=RP2_HEAP, executable=mp32, path_extra=[app])
    dev.wait_for(r"app: heap fragmented: \d+ bytes free")
    # (loading the cert store, umqtt or the handshake: whichever step first wants a block it cannot have)
    fails = dev.wait_for(r"iothub: not enough memory [^(]+\((\d) in a row; free heap (\d+)\)", count=3)
    assert [int(m.group(1)) for m in fails] == [1, 2, 3]
    assert all(int(m.group(2)) > 16 * 1024 for m in fails)  # plenty free in all, but not in one piece
    dev.wait_for(r"iothub: resetting the board: 3 connection attempts in a row failed for lack of memory")
    dev.wait_for(r"board: reset")
    assert dev.proc.wait(30) == 0
    assert "TLS refused" not in dev.log()  # memory is not held against the root set
