"""The firmware on lwIP's socket rules (ESP32, rp2), which the unix port does not have: the stand-in
tests/firmware/standins/lwipsocket.py replaces `socket` before boot (setblocking(True) clears a
timeout; a timeout ends in ETIMEDOUT). A hub that stalls (TCP open, nothing more sent) in the middle
of a packet, before its CONNACK or during the TLS handshake is detected within the bound; the app's
loop keeps running meanwhile; and nothing ever clears a timeout."""
import socket
import subprocess
import threading
import time

import pytest

from upyhub import sim

from fakehub import FakeHub
from fwtools import HUBNAME, STANDINS, new_key, server_ctx

LWIP = ("lwipsocket",)


def flash_for(tmp_path, pki, port, **settings):
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=HUBNAME, device_id="lwip-1", device_key=new_key(), ca_pem=pki["ca"].cert_pem.bytes(),
                    port=port, gateway="127.0.0.1", telemetry_interval=1, **settings)
    return flash


def test_the_stand_in_models_lwip(micropython):
    # What makes umqtt's wait_msg() hang on a board: settimeout(1) then setblocking(True) -> blocks.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    code = """
import lwipsocket, socket, time
s = socket.socket()
s.connect(socket.getaddrinfo("127.0.0.1", %d)[0][-1])
s.settimeout(1)
t = time.ticks_ms()
try:
    s.read(1)
except OSError as e:
    print("timeout", e.args[0], time.ticks_diff(time.ticks_ms(), t) >= 900)
s.setblocking(True)
print("blocking now")
s.read(1)
print("never")
""" % srv.getsockname()[1]
    import os

    p = subprocess.Popen([micropython, "-c", code], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, MICROPYPATH=str(STANDINS)))
    conn, _ = srv.accept()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            p.communicate(timeout=5)
    finally:
        p.kill()
        out = p.communicate()[0]
        conn.close()
        srv.close()
    assert out.splitlines() == ["timeout 110 True", "lwip: setblocking(True) cleared a 1 s timeout: reads may now "
                                "block forever", "blocking now"]


def test_hub_stalling_mid_packet_is_detected(tmp_path, pki, device):
    def stall(conn):
        time.sleep(1)
        # A PUBLISH whose length says more is coming: the first byte and a continued length, then nothing.
        if len(hub.connections) == 1:
            conn.send(b"\x30\x80")

    hub = FakeHub(server_ctx(pki["ca"].issue_cert(HUBNAME, "127.0.0.1")), stall)
    try:
        dev = device(flash_for(tmp_path, pki, hub.port, io_timeout=4), preload=LWIP)
        dev.wait_for(r"iothub: connected to ")
        # a packet that has begun gets io_timeout to finish (the loop waits that long at most)
        dev.wait_for(r"iothub: connection lost: ETIMEDOUT \(timed out\): the hub stalled in the middle of a packet",
                     timeout=60)
        dev.wait_for(r"iothub: connected to ", count=2, timeout=60)  # and it comes back
        assert "cleared a" not in dev.log()
    finally:
        hub.close()


def test_silent_hub_the_app_keeps_running_until_keepalive_gives_up(tmp_path, pki, device):
    def freeze(conn):
        time.sleep(1)
        conn.silent = True  # no PUBACK, no PINGRESP, nothing: TCP open

    hub = FakeHub(server_ctx(pki["ca"].issue_cert(HUBNAME, "127.0.0.1")), freeze)
    try:
        dev = device(flash_for(tmp_path, pki, hub.port, keepalive=6), preload=LWIP)
        dev.wait_for(r"iothub: connected to ")
        before = len(dev.lines)
        lost = dev.wait_for(r"iothub: connection lost: ETIMEDOUT \(timed out\): no answer from the hub for 1.5 x "
                            r"keep-alive", timeout=60)
        silent = dev.lines[before:dev.lines.index(lost[0].string)]
        # one reading a second went on being queued while nothing came back (9 s of silence)
        assert sum("app: telemetry" in x for x in silent) >= 5, silent
        assert "cleared a" not in dev.log()
    finally:
        hub.close()


def silent_tls_server(ctx, tls=True):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
                held.append(ctx.wrap_socket(c, server_side=True) if tls else c)
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_no_connack_on_lwip_times_out(tmp_path, pki, device):
    srv = silent_tls_server(server_ctx(pki["ca"].issue_cert(HUBNAME, "127.0.0.1")))
    try:
        dev = device(flash_for(tmp_path, pki, srv.getsockname()[1], io_timeout=3), preload=LWIP)
        dev.wait_for(r"iothub: connect failed: no CONNACK within 3 s", count=2, timeout=60)
        assert "cleared a" not in dev.log()
    finally:
        srv.close()


def test_silent_server_during_the_handshake_on_lwip_times_out(tmp_path, pki, device):
    # TCP accepted, not a byte of TLS back: the handshake read ends with ETIMEDOUT after io_timeout.
    srv = silent_tls_server(None, tls=False)
    try:
        dev = device(flash_for(tmp_path, pki, srv.getsockname()[1], io_timeout=3), preload=LWIP)
        dev.wait_for(r"iothub: TLS refused: handshake with %s failed: ETIMEDOUT" % HUBNAME, count=2, timeout=60)
        assert "cleared a" not in dev.log()
    finally:
        srv.close()


def test_end_to_end_on_lwip(hub, tmp_path, device):  # noqa: F811
    from fwtools import provision, wait_until

    provision(hub, tmp_path / "flash", "lwip-2", telemetry_interval=1)
    dev = device(tmp_path / "flash", preload=LWIP)
    dev.wait_for(r"iothub: connected to ")
    wait_until(lambda: len(hub.service.telemetry("lwip-2")) >= 3, what="telemetry")
    assert hub.service.invoke_method("lwip-2", "ping", 1, timeout=30)[0] == 200
    hub.service.send_c2d("lwip-2", "over lwip", {})
    dev.wait_for(r"app: c2d over lwip")
    assert "cleared a" not in dev.log()
