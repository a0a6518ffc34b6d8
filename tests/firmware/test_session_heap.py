"""The whole session from .mpy on a bounded heap: connect over TLS, telemetry, a desired property,
a direct method, reconnect, under `micropython -X heapsize=...`.

Budget: BUDGET for everything the session keeps on the Python heap, plus what this unix build
alone puts there: its TLS context embeds mbed TLS's entropy state, which Debian's mbed TLS (HAVEGE
enabled) makes ~38 KB larger than MicroPython's own mbed TLS configuration on boards (whose whole
context is a few KB). That excess is measured and added.

NOT MET YET: the target is 64 KB. On this 64-bit unix port (pointers, dicts and code objects twice
a board's size) the session needs ~70 KB at its peak (reconnecting, with the certificate store
loaded next to everything else: ~15 KB of it), so this test holds it to 80 KB to catch growth."""
import json
import time

import pytest

from upyhub import sim

from hubfixture import hub  # noqa: F401

pytestmark = pytest.mark.slow

BUDGET = 80 * 1024
BOARD_CONTEXT = 4 * 1024  # a board's SSLContext (ssl config, CA chain head, DRBG, small entropy pool)

CTX_SIZE = """
import gc, tls
gc.collect()
a = gc.mem_alloc()
c = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
gc.collect()
print(gc.mem_alloc() - a)
"""


@pytest.fixture(scope="module")
def heapsize(run_mp):
    p = run_mp(CTX_SIZE)
    assert p.returncode == 0, p.stderr
    ctx = int(p.stdout)
    return BUDGET + max(0, ctx - BOARD_CONTEXT)


def test_session_on_board_sized_heap(hub, tmp_path, device, heapsize):  # noqa: F811
    key = hub.add_device("heap-1")
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=hub.hostname, device_id="heap-1", device_key=key, ca_pem=hub.ca_pem,
                    port=hub.mqtt_port, gateway=hub.host, telemetry_interval=1)
    dev = device(flash, heapsize=heapsize)
    dev.wait_for(r"iothub: connected to %s as heap-1" % hub.hostname)
    deadline = time.monotonic() + 60
    while len(hub.service.telemetry("heap-1")) < 3:
        assert time.monotonic() < deadline, dev.log()
        time.sleep(0.2)
    assert hub.service.invoke_method("heap-1", "ping", {"x": 1}, timeout=30)[0] == 200
    hub.service.update_twin("heap-1", {"telemetryInterval": 2})
    dev.wait_for(r"app: telemetry every 2 s")
    seq = max(json.loads(m["body"])["seq"] for m in hub.service.telemetry("heap-1"))
    dev.wait_for(r"app: telemetry %d queued" % (seq + 2))
    hub.restart()  # a reconnect: the certificate store is loaded again next to everything else
    dev.wait_for(r"iothub: connected to %s as heap-1" % hub.hostname, count=2, timeout=120)
    assert "MemoryError" not in dev.log() and "memory allocation failed" not in dev.log()
