"""`upyhub hub serve --handshake-timeout S`: the TLS deadline of the device endpoints (MQTT, DPS) is the hub's.

Timing bounds are loose on purpose (a shared, noisy machine): a drop is checked to come after most of the
deadline and long before anything else would have closed the connection.
"""
import socket
import ssl
import subprocess
import sys
import time

import pytest

from hubdev import connect_packet, token, wait_for
from hubfixture import LocalHub
from upyhub.errors import UsageError
from upyhub.hub import broker

pytestmark = pytest.mark.slow


def seconds_until_dropped(host, port, limit=30):
    """Seconds from connect to the hub closing a TCP connection that never starts TLS (None: not within limit)."""
    s = socket.create_connection((host, port), timeout=limit)
    start = time.monotonic()
    try:
        s.settimeout(limit)
        try:
            while s.recv(4096):
                pass
        except TimeoutError:
            return None
        except OSError:  # reset
            pass
        return time.monotonic() - start
    finally:
        s.close()


def test_a_short_deadline_drops_a_silent_client_after_it(tmp_path):
    hub = LocalHub(tmp_path / "hub", handshake_timeout=1).start()
    try:
        assert "TLS handshake within 1 s" in hub.log()  # the summary's limits
        for port in (hub.mqtt_port, hub.dps_port):
            took = seconds_until_dropped(hub.host, port)
            assert took is not None and 0.8 <= took < 4.5, (port, took)  # not the default 5 s, not before 1 s
        wait_for(lambda: hub.log().count("no TLS handshake within 1 s") >= 2, what="both drops logged")
    finally:
        hub.stop()


def test_a_long_deadline_keeps_a_client_that_takes_6_s(tmp_path):
    hub = LocalHub(tmp_path / "hub", handshake_timeout=8).start()
    try:
        assert "TLS handshake within 8 s" in hub.log()
        key = hub.add_device("slow")
        raw = socket.create_connection((hub.host, hub.mqtt_port), timeout=60)
        time.sleep(6)  # an emulated board computing its side of the handshake (past the default 5 s)
        with ssl.create_default_context(cafile=str(hub.ca_path)).wrap_socket(raw, server_hostname=hub.hostname) as s:
            s.sendall(connect_packet(hub, "slow", token(hub, "slow", key)))
            assert s.recv(4) == bytes([0x20, 2, 0, 0])  # CONNACK 0: the connection was kept and logs in
        assert "no TLS handshake within" not in hub.log()
    finally:
        hub.stop()


@pytest.mark.parametrize("value", ["0", "-1", "600.5", "1e9", "nan", "inf", "five", ""])
def test_a_bad_deadline_is_a_usage_error(tmp_path, value):
    out = subprocess.run([sys.executable, "-m", "upyhub", "hub", "serve", "--data", str(tmp_path / "hub"),
                          "--port", "0", "--handshake-timeout", value], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, (value, out.returncode, out.stdout, out.stderr)
    assert out.stderr.startswith("upyhub: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "--handshake-timeout" in out.stderr and "Traceback" not in out.stderr


def test_the_library_checks_the_deadline_too():
    assert broker.check_handshake_timeout(600) == 600.0 and broker.check_handshake_timeout(0.25) == 0.25
    for value in (0, -1, 600.01, float("nan"), float("inf"), True, "5", None):
        with pytest.raises(UsageError):
            broker.check_handshake_timeout(value)
