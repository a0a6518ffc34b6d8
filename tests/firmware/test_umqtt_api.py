"""Both umqtt.simple APIs: the PyPI 1.3.4 release (what build/ ships: `ssl=True, ssl_params`,
`ussl.wrap_socket(sock, **ssl_params)`) and micropython-lib's 1.4+ (`ssl=<SSLContext>`, wrapped with
`ssl.wrap_socket(sock, server_hostname=self.server)`).

micropython-lib's current release cannot be downloaded here. Its API change against 1.3.4 is
small and documented (the constructor's `ssl=False, ssl_params={}` became `ssl=None`; the
`import ussl` + `ussl.wrap_socket(self.sock, **self.ssl_params)` pair became
`self.ssl.wrap_socket(self.sock, server_hostname=self.server)`), so the test derives a 1.4-API
client from the shipped 1.3.4 file by exactly those edits (each must apply exactly once) and runs
the real firmware with it: against a server whose certificate names only the hub (so a TLS name
taken from umqtt's connect address, 127.0.0.1, would fail) and end to end against the local hub.
Releases from 1.5 on accept `ssl=True, ssl_params` again beside `ssl=<context>`
(`if self.ssl is True: ssl.wrap_socket(sock, **ssl_params) elif self.ssl: self.ssl.wrap_socket(...)`):
that variant is derived the same way and run too.
What this does not cover: any other difference of later releases (e.g. 1.5's `connect(timeout=)`)."""
import json
import time

import pytest

from upyhub import paths, sim

from fwtools import HUBNAME, new_key, server_ctx

OLD_SIG = "ssl=False, ssl_params={}):"
NEW_SIG = "ssl=None):"
OLD_WRAP = "            import ussl\n            self.sock = ussl.wrap_socket(self.sock, **self.ssl_params)\n"
NEW_WRAP = "            self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)\n"
OLD_ATTR = "        self.ssl_params = ssl_params\n"
# 1.5+: both forms; `ssl=True` goes to the ssl module with ssl_params, an object to its wrap_socket
SIG_15 = "ssl=None, ssl_params={}):"
WRAP_15 = ("        if self.ssl is True:\n"
           "            import ssl\n"
           "            self.sock = ssl.wrap_socket(self.sock, **self.ssl_params)\n"
           "        elif self.ssl:\n"
           "            self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server)\n")
OLD_IF = "        if self.ssl:\n" + OLD_WRAP


@pytest.fixture(scope="module", params=["1.4", "1.5"])
def umqtt14(request, tmp_path_factory):
    src = (paths.UMQTT / "umqtt" / "simple.py").read_text()
    for old in (OLD_SIG, OLD_WRAP, OLD_ATTR, OLD_IF):
        assert src.count(old) == 1, "umqtt 1.3.4 source changed: %r" % old
    if request.param == "1.4":
        src = src.replace(OLD_SIG, NEW_SIG).replace(OLD_WRAP, NEW_WRAP).replace(OLD_ATTR, "")
        assert "ussl" not in src and "ssl_params" not in src
    else:
        src = src.replace(OLD_SIG, SIG_15).replace(OLD_IF, WRAP_15)
        assert "ussl" not in src and "self.ssl is True" in src
    d = tmp_path_factory.mktemp("umqtt" + request.param.replace(".", ""))
    (d / "umqtt").mkdir()
    (d / "umqtt" / "__init__.py").write_text("")
    (d / "umqtt" / "simple.py").write_text(src)
    return d


def test_14_api_verifies_hub_name_not_connect_address(tmp_path, pki, device, recorder, umqtt14):
    rec = recorder(server_ctx(pki["ca"].issue_cert(HUBNAME)))  # no 127.0.0.1 in this certificate
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=HUBNAME, device_id="dev-14", device_key=new_key(),
                    ca_pem=pki["ca"].cert_pem.bytes(), port=rec.port, gateway="127.0.0.1")
    dev = device(flash, path_extra=[umqtt14])
    dev.wait_for(r"iothub: connect failed")  # the recorder never answers CONNECT
    assert rec.handshakes[0] == "ok TLSv1.2"
    assert b"MQTT" in bytes(rec.received)
    assert "TLS refused" not in dev.log()


def test_14_api_refuses_wrong_ca(tmp_path, pki, device, recorder, umqtt14):
    rec = recorder(server_ctx(pki["other"].issue_cert(HUBNAME, "127.0.0.1")))
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=HUBNAME, device_id="dev-14", device_key=new_key(),
                    ca_pem=pki["ca"].cert_pem.bytes(), port=rec.port)
    dev = device(flash, path_extra=[umqtt14])
    dev.wait_for(r"iothub: TLS refused: handshake with %s failed" % HUBNAME)
    dev.stop()
    assert b"MQTT" not in bytes(rec.received)


@pytest.mark.slow
def test_14_api_end_to_end(hub, tmp_path, device, umqtt14):  # noqa: F811
    key = hub.add_device("dev-14")
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=hub.hostname, device_id="dev-14", device_key=key, ca_pem=hub.ca_pem,
                    port=hub.mqtt_port, gateway=hub.host, telemetry_interval=1)
    dev = device(flash, path_extra=[umqtt14])
    dev.wait_for(r"iothub: connected to %s as dev-14" % hub.hostname)
    deadline = time.monotonic() + 60
    while not hub.service.telemetry("dev-14"):
        assert time.monotonic() < deadline, "no telemetry"
        time.sleep(0.2)
    assert json.loads(hub.service.telemetry("dev-14")[0]["body"])["seq"] >= 1
    assert hub.service.invoke_method("dev-14", "ping", 1, timeout=30) == (200, {"pong": 1, "device": "dev-14"})
