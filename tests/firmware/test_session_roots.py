"""Root rotation through the session, end to end: the hub gets a new CA; the service pushes the new
root set with the `updateRootCerts` direct method; the device stages it, proves it on its next
TLS session (then keeps it), and still connects once the hub serves a certificate from the new CA,
while a device that never got the new roots is refused."""
import hashlib
import subprocess
import sys
import time

import pytest

from upyhub import sim

from fwtools import wait_until


pytestmark = pytest.mark.slow


def hub_cli(hub, *args):  # noqa: F811
    p = subprocess.run([sys.executable, "-m", "upyhub", "hub"] + list(args) + ["--data", str(hub.data_dir)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def provision(hub, flash, device_id):  # noqa: F811
    key = hub.add_device(device_id)
    sim.write_flash(flash, hostname=hub.hostname, device_id=device_id, device_key=key, ca_pem=hub.ca_pem,
                    port=hub.mqtt_port, gateway=hub.host, telemetry_interval=2)


def test_rotation_over_the_air(hub, tmp_path, device):  # noqa: F811
    provision(hub, tmp_path / "a", "rot-1")
    provision(hub, tmp_path / "b", "rot-stale")
    dev = device(tmp_path / "a")
    dev.wait_for(r"iothub: connected ")
    wait_until(lambda: "rootCerts" in hub.service.get_twin("rot-1")["properties"]["reported"],
               what="rootCerts reported after the connection")

    hub_cli(hub, "rotate-ca")
    bundle = hub_cli(hub, "ca", "--all").encode()
    assert bundle.count(b"BEGIN CERTIFICATE") == 2
    status, body = hub.service.invoke_method("rot-1", "updateRootCerts",
                                             {"pem": bundle.decode(), "sha256": hashlib.sha256(bundle).hexdigest()},
                                             timeout=60)
    assert status == 200 and body["status"] == "staged", body
    bad = hub.service.invoke_method("rot-1", "updateRootCerts", {"pem": bundle.decode(), "sha256": "00" * 32},
                                    timeout=60)
    assert bad[0] == 400  # a set that does not match its digest never touches flash
    huge = bundle * (40000 // len(bundle) + 1)  # over 2 x 16 KB of JSON: refused by its size, unparsed
    status, body = hub.service.invoke_method("rot-1", "updateRootCerts",
                                             {"pem": huge.decode(), "sha256": hashlib.sha256(huge).hexdigest()},
                                             timeout=60)
    assert status == 400 and "more than the limit of 33024" in body["message"], body

    hub.restart()  # the next TLS session tries the staged set and keeps it
    dev.wait_for(r"iothub: connected ", count=2, timeout=120)
    active = (tmp_path / "a" / "certs" / "active" / "roots.pem").read_bytes()
    assert active == bundle
    # and the device says so: rootCerts reported again once the staged set was kept
    deadline = time.monotonic() + 60
    while len(hub.service.get_twin("rot-1")["properties"]["reported"]["rootCerts"]["active"]["certs"]) != 2:
        assert time.monotonic() < deadline, dev.log()
        time.sleep(0.2)

    hub_cli(hub, "rotate-ca", "--activate")
    hub.restart()
    dev.wait_for(r"iothub: connected ", count=3, timeout=120)
    stale = device(tmp_path / "b")
    stale.wait_for(r"iothub: TLS refused: handshake with %s failed" % hub.hostname, timeout=120)
    assert "connected" not in stale.log()
