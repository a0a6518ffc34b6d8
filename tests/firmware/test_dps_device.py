"""The firmware's Device Provisioning Service client (lib/iothub/dps.py) against the local DPS: the first
boot registers (individual enrollment, group enrollment with a derived key, X.509), keeps the assignment
on flash and connects to the assigned hub; the next boots go straight to the hub. It registers again
when the hub keeps refusing it (the device was deleted) or when the cloud calls `reprovision`, and when
the assignment on flash is torn. Refusals (wrong key, disabled enrollment, unknown ID scope, a DPS
certificate not under the pinned roots) are one line each and back off."""
import json
import re
import subprocess
import sys

import pytest

from upyhub import sas, sim
from upyhub.hub import dps

from fwtools import wait_until

pytestmark = pytest.mark.slow


def cli(hub, *args):
    p = subprocess.run([sys.executable, "-m", "upyhub", "hub", *args, "--data", str(hub.data_dir)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def dps_flash(hub, flash, registration_id, key=None, scope=None, ca_pem=None, **settings):
    """A flash folder that knows only DPS: its ID scope, the registration id and the device's own key."""
    d = {"id_scope": scope or hub.id_scope, "registration_id": registration_id, "gateway": "127.0.0.1",
         "port": hub.dps_port}
    sim.write_flash(flash, hostname=None, device_id=None, device_key=key, ca_pem=ca_pem or hub.ca_pem, port=hub.mqtt_port,
                    gateway=hub.host, dps=d, telemetry_interval=1, retry_cap=4, **settings)
    cfg = json.loads((flash / "config.json").read_text())
    for k in ("hostname", "device_id"):  # nothing about the hub: DPS says
        cfg.pop(k, None)
    (flash / "config.json").write_text(json.dumps(cfg))
    return flash


def telemetry(hub, device_id):
    return hub.service.telemetry(device_id)


def test_individual_enrollment_first_boot_registers_then_connects_straight(hub, tmp_path, device):  # noqa: F811
    enr = dps.create_enrollment(hub.data_dir, "sensor-1")
    flash = dps_flash(hub, tmp_path / "flash", "sensor-1", enr["attestation"]["symmetricKey"]["primaryKey"])
    dev = device(flash)
    dev.wait_for(r"iothub: registered with DPS: sensor-1 on %s" % re.escape(hub.hostname))
    dev.wait_for(r"iothub: connected to %s as sensor-1" % re.escape(hub.hostname))
    wait_until(lambda: telemetry(hub, "sensor-1"), what="telemetry from the assigned device")
    assignment = (flash / "dps.json").read_text().splitlines()
    assert json.loads(assignment[0]) == {"id_scope": hub.id_scope, "registration_id": "sensor-1",
                                         "hub": hub.hostname, "device_id": "sensor-1"}
    dev.stop()
    # the next boot goes straight to the hub
    again = device(flash)
    again.wait_for(r"iothub: connected to %s as sensor-1" % re.escape(hub.hostname))
    assert "registered with DPS" not in again.log()
    # a torn assignment: it registers again
    (flash / "dps.json").write_text(assignment[0][:20])
    again.stop()
    third = device(flash)
    third.wait_for(r"iothub: registered with DPS: sensor-1")
    third.wait_for(r"iothub: connected to ")


def test_group_enrollment_with_a_derived_key_and_the_refusals(hub, tmp_path, device):  # noqa: F811
    group = dps.create_enrollment_group(hub.data_dir, "fleet")
    group_key = group["attestation"]["symmetricKey"]["primaryKey"]
    derived = sas.derive_device_key(group_key, "fleet-7")  # made at the factory: the group key stays there
    dev = device(dps_flash(hub, tmp_path / "a", "fleet-7", derived))
    dev.wait_for(r"iothub: connected to %s as fleet-7" % re.escape(hub.hostname))
    assert group_key not in dev.log() and derived not in dev.log()
    # a wrong key: 401, said once a try, with backoff
    wrong = device(dps_flash(hub, tmp_path / "b", "fleet-8", sas.derive_device_key(sas.new_key(), "fleet-8")))
    found = wrong.wait_for(r"iothub: DPS refused the registration: not authorized: wrong key or certificate", count=2)
    wrong.wait_for(r"iothub: retry in \d+ ms \(attempt 2\)")
    assert found and "connected" not in wrong.log()
    # a disabled enrollment: 403
    enr = dps.create_enrollment(hub.data_dir, "off-1")
    cli(hub, "dps", "enrollment", "disable", "off-1")
    off = device(dps_flash(hub, tmp_path / "c", "off-1", enr["attestation"]["symmetricKey"]["primaryKey"]))
    off.wait_for(r"iothub: DPS refused the registration: the enrollment is disabled")
    # an ID scope DPS does not know
    other = device(dps_flash(hub, tmp_path / "d", "fleet-9", sas.derive_device_key(group_key, "fleet-9"),
                             scope="0ne00000000"))
    other.wait_for(r"iothub: DPS refused the registration: not authorized")


def test_dps_certificate_not_under_the_pinned_roots(hub, tmp_path, device, pki):  # noqa: F811
    enr = dps.create_enrollment(hub.data_dir, "pinned-1")
    flash = dps_flash(hub, tmp_path / "flash", "pinned-1", enr["attestation"]["symmetricKey"]["primaryKey"],
                      ca_pem=pki["other"].cert_pem.bytes())
    dev = device(flash)
    dev.wait_for(r"iothub: DPS TLS refused: handshake with global\.azure-devices-provisioning\.net failed")
    assert not (flash / "dps.json").exists()


def test_registers_again_when_deleted_from_the_hub_and_on_reprovision(hub, tmp_path, device):  # noqa: F811
    enr = dps.create_enrollment(hub.data_dir, "move-1")
    flash = dps_flash(hub, tmp_path / "flash", "move-1", enr["attestation"]["symmetricKey"]["primaryKey"],
                      refused_retry=1)
    dev = device(flash)
    dev.wait_for(r"iothub: connected to ")
    # the cloud asks for it
    status, body = hub.service.invoke_method("move-1", "reprovision", None, timeout=30)
    assert status == 200 and body["status"] == "reprovisioning"
    dev.wait_for(r"iothub: registered with DPS: move-1", count=2)
    dev.wait_for(r"iothub: connected to ", count=2)
    # the device is deleted from the hub: CONNACK 5 three times, then DPS again (which creates it anew)
    hub.service.delete_device("move-1", etag="*")
    dev.wait_for(r"iothub: the hub refused this device 3 times in a row: registering with DPS again", timeout=120)
    dev.wait_for(r"iothub: registered with DPS: move-1", count=3)
    dev.wait_for(r"iothub: connected to ", count=3, timeout=120)
    wait_until(lambda: telemetry(hub, "move-1"), what="telemetry after registering again")
