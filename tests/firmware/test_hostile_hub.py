"""A server the device trusts (its certificate chains to the pinned root) sends what IoT Hub never
would: a 1 MB PUBLISH, a method name with %FF, a topic that is not UTF-8, a request without $rid, a
method payload over 128 KB; or it closes right after CONNECT. The device skips, acknowledges, logs
one readable line each and keeps its one connection; nothing is allocated whole."""
import json
import re
import time

from upyhub import sim

from fakehub import FakeHub, publish, wait
from fwtools import HUBNAME, new_key, server_ctx

DEV = "hostile-1"
C2D = "devices/%s/messages/devicebound/" % DEV


def flash_for(tmp_path, pki, port, **settings):
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=HUBNAME, device_id=DEV, device_key=new_key(), ca_pem=pki["ca"].cert_pem.bytes(),
                    port=port, gateway="127.0.0.1", telemetry_interval=1, **settings)
    return flash


def test_oversized_and_unreadable_messages_are_skipped_and_the_connection_stays(tmp_path, pki, device):
    def script(conn):
        time.sleep(0.5)
        conn.send(publish(C2D + "size=big", b"x" * (1 << 20), qos=1, pid=7))  # 1 MB: IoT Hub's C2D limit is 64 KB
        conn.send(publish(b"$iothub/methods/POST/%FF/?$rid=5", b"{}"))  # a name that is not UTF-8 once unquoted
        conn.send(publish(C2D.encode() + b"\xff\xfe=1", b"bad", qos=1, pid=8))  # raw bytes that are not UTF-8
        conn.send(publish("$iothub/methods/POST/ping/", b"{}"))  # no $rid: nobody to answer
        conn.send(publish("$iothub/methods/POST/big/?$rid=6", b"[" + b"1," * 70000 + b"1]"))  # 140 KB > 128 KB
        conn.send(publish(C2D + "color=red", b"hello after", qos=1, pid=9))

    hub = FakeHub(server_ctx(pki["ca"].issue_cert(HUBNAME, "127.0.0.1")), script)
    try:
        dev = device(flash_for(tmp_path, pki, hub.port), heapsize="256K")  # far below the 1 MB packet
        dev.wait_for(r"app: c2d hello after \{\"color\": \"red\"\}")
        conn = hub.connections[0]
        assert conn.filters == 4  # C2D, twin responses, desired, methods: one SUBSCRIBE, one round trip
        wait(lambda: {7, 8, 9} <= set(conn.pubacks), what="PUBACKs for the dropped and the good C2D")
        wait(lambda: any(t == "$iothub/methods/res/413/?$rid=6" for t, _ in conn.published), what="413 answer")
        answer = json.loads(dict(conn.published)["$iothub/methods/res/413/?$rid=6"])
        assert "140003 bytes dropped by the device: too large" in answer["error"]
        dev.wait_for(r"iothub: c2d message of 1048576 bytes dropped: larger than IoT Hub sends \(1 dropped so far\)")
        dev.wait_for(r"iothub: method message of 140003 bytes dropped: larger than IoT Hub sends")
        assert len(dev.wait_for(r"iothub: a message on an unreadable or foreign topic .* ignored")) == 3
        # the count is reported on the twin
        wait(lambda: any(t.startswith("$iothub/twin/PATCH/properties/reported/") and b"inboundDropped" in b
                         for t, b in conn.published), what="inboundDropped reported")
        time.sleep(2)  # and the connection is the same one: no reconnect, no traceback
        assert len(hub.connections) == 1 and not conn.closed.is_set()
        log = dev.log()
        assert "connection lost" not in log and "Traceback" not in log and "MemoryError" not in log, log
    finally:
        hub.close()


def test_server_that_closes_after_connect_is_named_in_words(tmp_path, pki, device, recorder):
    rec = recorder(server_ctx(pki["ca"].issue_cert(HUBNAME, "127.0.0.1")))  # reads CONNECT, answers nothing, hangs up
    dev = device(flash_for(tmp_path, pki, rec.port, io_timeout=30))
    dev.wait_for(r"iothub: connect failed: the server closed the connection or sent no CONNACK")
    assert not re.search(r"AssertionError|IndexError|OSError -?\d+$", dev.log())


def test_connack_that_never_comes_times_out(tmp_path, pki, device):
    import socket
    import ssl
    import threading

    ctx = server_ctx(pki["ca"].issue_cert(HUBNAME, "127.0.0.1"))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []

    def serve():  # TLS, then silence with the connection held open
        while True:
            try:
                c, _ = srv.accept()
                held.append(ctx.wrap_socket(c, server_side=True))
            except (OSError, ssl.SSLError):
                return

    threading.Thread(target=serve, daemon=True).start()
    try:
        dev = device(flash_for(tmp_path, pki, srv.getsockname()[1], io_timeout=3))
        dev.wait_for(r"iothub: connect failed: no CONNACK within 3 s", timeout=60)  # io_timeout, not forever
    finally:
        srv.close()
