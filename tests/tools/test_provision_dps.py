"""`upyhub provision --dps` on the simulated board with the real mpremote, against the local DPS: the board
gets the ID scope, its registration id and its own key (derived from a group key kept on the host, or an
individual enrollment's), never the group key; the check is a DPS token minted on the board with that key,
presented to DPS; after the reset the firmware registers by itself and connects to the assigned hub."""
import json
import subprocess

import pytest

from simboardfixture import UPYHUB, wait_for
from upyhub import sas
from upyhub.hub import dps


def run(hub, *args, timeout=300):
    return subprocess.run([UPYHUB, "provision", *args, "--board", "unix", "--dps", "--data", str(hub.data_dir),
                           "--timeout", "60"], capture_output=True, text=True, timeout=timeout)


def group_key_file(hub, tmp_path, group_id):
    """A symmetric-key enrollment group on the local DPS; its key in tmp_path/group.key (0600), as a factory keeps it."""
    key = dps.create_enrollment_group(hub.data_dir, group_id)["attestation"]["symmetricKey"]["primaryKey"]
    (tmp_path / "group.key").write_text(key)
    (tmp_path / "group.key").chmod(0o600)
    return key


@pytest.mark.slow
def test_group_key_stays_on_the_host_and_the_board_registers(hub, sim_board, tmp_path):
    group_key = group_key_file(hub, tmp_path, "factory")
    res = run(hub, sim_board.port, "--device-id", "line-4", "--group-key-file", str(tmp_path / "group.key"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("DPS assigns line-4 on %s" % hub.hostname), res.stdout
    flash = sim_board.flash
    cfg = json.loads((flash / "config.json").read_text())
    assert cfg["dps"] == {"id_scope": hub.id_scope, "registration_id": "line-4", "endpoint": hub.dps_hostname,
                          "port": hub.dps_port, "gateway": "127.0.0.1"}
    assert "hostname" not in cfg and "device_id" not in cfg and cfg["port"] == hub.mqtt_port
    secrets = json.loads((flash / "secrets.json").read_text())
    assert secrets == {"device_key": sas.derive_device_key(group_key, "line-4")}
    for p in flash.rglob("*"):  # the group key is on no file of the board
        assert not p.is_file() or group_key.encode() not in p.read_bytes(), p
    assert group_key not in res.stdout + res.stderr
    # the reset boots the firmware: it registers with its own key and sends telemetry to the assigned hub
    wait_for(lambda: hub.service.telemetry(device="line-4"), timeout=120, interval=1)
    assert json.loads((flash / "dps.json").read_text().splitlines()[0])["hub"] == hub.hostname
    # a re-run changes nothing
    again = run(hub, sim_board.port, "--device-id", "line-4", "--group-key-file", str(tmp_path / "group.key"),
                "--no-reset")
    assert again.returncode == 0 and "nothing to write" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_individual_enrollment_and_refusals(hub, sim_board, tmp_path):
    res = run(hub, sim_board.port, "--device-id", "solo-1", "--enroll", "--no-reset")
    assert res.returncode == 0, res.stderr
    key = json.loads((sim_board.flash / "secrets.json").read_text())["device_key"]
    assert dps.get_enrollment(hub.data_dir, "solo-1", keys=True)["attestation"]["symmetricKey"]["primaryKey"] == key
    # a registration id DPS would refuse, a missing key source: one line, exit 2, nothing written
    for args, want in ((["--device-id", "Solo_2", "--enroll"], "registration id"),
                       (["--device-id", "solo-3"], "--dps needs the device's key")):
        res = run(hub, sim_board.port, *args)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and want in res.stderr, res.stderr
    # an enrollment DPS has disabled: the check fails with DPS's reason (exit 1)
    subprocess.run([UPYHUB, "hub", "dps", "enrollment", "disable", "solo-1", "--data", str(hub.data_dir)], check=True,
                   capture_output=True)
    res = run(hub, sim_board.port, "--device-id", "solo-1", "--enroll", "--no-reset")
    assert res.returncode == 1 and "DPS refused the registration (403)" in res.stderr, res.stderr


@pytest.mark.slow
def test_a_batch_from_one_group_key_registers_with_distinct_keys(hub, tmp_path, start_sim_board):
    group_key = group_key_file(hub, tmp_path, "batch")
    boards = []
    for i in range(3):
        (tmp_path / ("board%d" % i)).mkdir()
        boards.append(start_sim_board(tmp_path / ("board%d" % i)))
    rows = tmp_path / "devices.csv"
    rows.write_text("port,device_id\n" + "".join("%s,unit-%d\n" % (b.port, i) for i, b in enumerate(boards)))
    res = subprocess.run([UPYHUB, "provision", "--batch", str(rows), "--board", "unix", "--dps", "--data",
                          str(hub.data_dir), "--group-key-file", str(tmp_path / "group.key"), "--timeout", "60"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 of 3 boards provisioned" in res.stdout
    keys = [json.loads((b.flash / "secrets.json").read_text())["device_key"] for b in boards]
    assert len(set(keys)) == 3 and group_key not in keys
    assert keys == [sas.derive_device_key(group_key, "unit-%d" % i) for i in range(3)]
    # each board registers by itself after its reset and sends telemetry to its assigned device
    for i in range(3):
        wait_for(lambda: hub.service.telemetry(device="unit-%d" % i), timeout=120, interval=1)
    assert sorted(r["registrationId"] for r in dps_registrations(hub)) == ["unit-0", "unit-1", "unit-2"]


def dps_registrations(hub):
    out = subprocess.run([UPYHUB, "hub", "dps", "registration", "list", "-o", "json", "--data", str(hub.data_dir)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
