"""upyhub provision / keys derive against the simulated board (real mpremote) and the local hub."""
import base64
import csv
import hashlib
import json
import os
import pathlib
import stat
import subprocess
import time

import pytest

from simboardfixture import UPYHUB, wait_for
from upyhub import provision, sas
from upyhub.errors import UsageError


def tree(flash):
    """{relative path: (sha256, mtime_ns)} of every file: proves what was (not) rewritten."""
    out = {}
    for p in sorted(pathlib.Path(flash).rglob("*")):
        if p.is_file():
            out[p.relative_to(flash).as_posix()] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


class Provisioner:
    def __init__(self, hub, tmp_path):
        self.hub = hub
        self.tmp = tmp_path
        self.cs_file = tmp_path / "hub.cs"
        self.cs_file.write_text(hub.connection_string("registryReadWrite"))
        os.chmod(self.cs_file, 0o600)

    def common(self, cs_file=None, timeout=60):
        return ["--board", "unix", "--hub-cs-file", str(cs_file or self.cs_file), "--hub-ca", str(self.hub.ca_path),
                "--gateway", "127.0.0.1", "--https-port", str(self.hub.https_port),
                "--mqtt-port", str(self.hub.mqtt_port), "--timeout", str(timeout)]

    def args(self, port, device_id, *extra, cs_file=None, timeout=60):
        return [UPYHUB, "provision", port, "--device-id", device_id] + self.common(cs_file, timeout) + list(extra)

    def run(self, port, device_id, *extra, cs_file=None, env=None, timeout=300):
        return subprocess.run(self.args(port, device_id, *extra, cs_file=cs_file), capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ, **(env or {})))


@pytest.fixture
def prov(hub, tmp_path):
    return Provisioner(hub, tmp_path)


def board_key(flash):
    return json.loads((pathlib.Path(flash) / "secrets.json").read_text())["device_key"]


def no_hub_secrets_on(flash, hub):
    cs = hub.connection_string("registryReadWrite")
    policy_key = sas.parse_connection_string(cs)["SharedAccessKey"]
    owner_key = sas.parse_connection_string(hub.owner_cs)["SharedAccessKey"]
    for p in pathlib.Path(flash).rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for bad in (policy_key.encode(), owner_key.encode(), b"SharedAccessKeyName", b"HostName="):
                assert bad not in data, p


def accepted(hub, device_id, key):
    token = sas.mint("%s/devices/%s" % (hub.hostname, device_id), key, int(time.time()) + 300)
    return provision.mqtt_connect("127.0.0.1", hub.mqtt_port, hub.hostname, hub.ca_pem, device_id, token) == 0


def test_provisioned_board_connects_with_its_own_key(prov, hub, sim_board):
    res = prov.run(sim_board.port, "dev1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("dev1 on %s: hub created, wrote " % sim_board.port)
    assert res.stdout.strip().endswith("token accepted")
    flash = sim_board.flash
    secrets = json.loads((flash / "secrets.json").read_text())
    assert list(secrets) == ["device_key"] and len(base64.b64decode(secrets["device_key"])) == 32
    doc = hub.service.get_device("dev1")
    assert doc["authentication"]["symmetricKey"]["primaryKey"] == secrets["device_key"]
    cfg = json.loads((flash / "config.json").read_text())
    assert cfg["hostname"] == hub.hostname and cfg["device_id"] == "dev1" and cfg["gateway"] == "127.0.0.1"
    assert cfg["port"] == hub.mqtt_port
    assert (flash / "certs" / "active" / "roots.pem").read_bytes() == hub.ca_pem
    assert (flash / "lib" / "iothub" / "sas.mpy").exists() and (flash / "lib" / "board.mpy").exists()
    assert (flash / "main.py").read_bytes() == (pathlib.Path(__file__).parents[2] / "firmware" / "main.py").read_bytes()
    no_hub_secrets_on(flash, hub)
    assert secrets["device_key"] not in res.stdout + res.stderr
    # The reset boots the firmware, which connects with the flashed key and sends telemetry.
    msgs = wait_for(lambda: hub.service.telemetry(device="dev1"), timeout=120, interval=1)
    assert msgs[0]["deviceId"] == "dev1"


def test_rerun_changes_nothing(prov, hub, sim_board):
    assert prov.run(sim_board.port, "dev1", "--no-reset").returncode == 0
    before, doc = tree(sim_board.flash), hub.service.get_device("dev1")
    res = prov.run(sim_board.port, "dev1", "--no-reset")
    assert res.returncode == 0, res.stderr
    assert "hub unchanged, nothing to write, token accepted" in res.stdout
    assert tree(sim_board.flash) == before  # same bytes, and not even rewritten (mtimes)
    assert hub.service.get_device("dev1")["etag"] == doc["etag"]


def test_rotate_key_rolls_hub_and_board_together(prov, hub, sim_board):
    assert prov.run(sim_board.port, "dev1", "--no-reset").returncode == 0
    old = board_key(sim_board.flash)
    res = prov.run(sim_board.port, "dev1", "--rotate-key", "--no-reset")
    assert res.returncode == 0, res.stderr
    assert "hub rotated" in res.stdout
    new = board_key(sim_board.flash)
    assert new != old
    keys = hub.service.get_device("dev1")["authentication"]["symmetricKey"]
    assert keys["primaryKey"] == new and old not in (keys["primaryKey"], keys["secondaryKey"])
    assert accepted(hub, "dev1", new) and not accepted(hub, "dev1", old)


def test_interrupted_rotation_is_finished_by_a_rerun(prov, hub, sim_board):
    assert prov.run(sim_board.port, "dev1", "--no-reset").returncode == 0
    old = board_key(sim_board.flash)
    # As if a rotation stopped after the hub took the new key as secondary and the board got it.
    new = sas.new_key()
    hub.service.put_device("dev1", primary_key=old, secondary_key=new, etag="*")
    secrets = sim_board.flash / "secrets.json"
    secrets.write_text(json.dumps({"device_key": new}, sort_keys=True))
    res = prov.run(sim_board.port, "dev1", "--no-reset")
    assert res.returncode == 0, res.stderr
    assert "rotation finished" in res.stdout
    keys = hub.service.get_device("dev1")["authentication"]["symmetricKey"]
    assert keys["primaryKey"] == new and old not in (keys["primaryKey"], keys["secondaryKey"])


def test_interrupted_provisioning_converges(prov, hub, sim_board, tmp_path):
    # A policy that can read but not write the registry: the board gets its key and config,
    # then registering the device fails, as if the run had been cut there.
    ro = tmp_path / "ro.cs"
    ro.write_text(hub.connection_string("registryRead"))
    res = prov.run(sim_board.port, "dev1", cs_file=ro)
    assert res.returncode == 1  # a refusal at run time, not bad usage
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("upyhub: error:")]
    assert len(errors) == 1 and "RegistryReadWrite" in errors[0] and "Traceback" not in res.stderr
    written = board_key(sim_board.flash)
    res = prov.run(sim_board.port, "dev1", "--no-reset")
    assert res.returncode == 0, res.stderr
    assert board_key(sim_board.flash) == written  # the key from the cut run, now registered
    assert hub.service.get_device("dev1")["authentication"]["symmetricKey"]["primaryKey"] == written
    assert (sim_board.flash / "lib" / "iothub" / "session.mpy").exists()


def test_device_id_with_other_credentials(prov, hub, sim_board):
    hub.add_device("taken")
    res = prov.run(sim_board.port, "taken")
    assert res.returncode == 2
    assert "already exists on the hub with other credentials" in res.stderr
    assert list(sim_board.flash.iterdir()) == []  # refused before writing anything


def test_hub_refuses_the_policy_token(prov, hub, sim_board, tmp_path):
    cs = sas.parse_connection_string(hub.connection_string("registryReadWrite"))
    bad = tmp_path / "bad.cs"
    bad.write_text("HostName=%s;SharedAccessKeyName=registryReadWrite;SharedAccessKey=%s"
                   % (cs["HostName"], base64.b64encode(os.urandom(32)).decode()))
    res = prov.run(sim_board.port, "dev1", cs_file=bad)
    assert res.returncode == 1
    assert "refused the policy credentials" in res.stderr and "Traceback" not in res.stderr
    assert list(sim_board.flash.iterdir()) == []


def test_refuses_to_put_a_policy_key_on_the_board(prov, hub, sim_board, tmp_path):
    # A Wi-Fi password file that holds the policy key by mistake: it would land in secrets.json.
    policy_key = sas.parse_connection_string(hub.connection_string("registryReadWrite"))["SharedAccessKey"]
    pw = tmp_path / "wifi.pw"
    pw.write_text(policy_key)
    res = prov.run(sim_board.port, "dev1", "--wifi-ssid", "home", "--wifi-password-file", str(pw))
    assert res.returncode == 2
    assert "refused" in res.stderr and "policy or group key" in res.stderr
    assert policy_key not in res.stderr
    assert not (sim_board.flash / "secrets.json").exists()


def test_guard_refuses_connection_strings_and_keys():
    with pytest.raises(UsageError, match="connection string"):
        provision.guard({"config.json": b'{"x": "HostName=h;SharedAccessKeyName=p;SharedAccessKey=abc"}'}, [])
    with pytest.raises(UsageError, match="policy or group key"):
        provision.guard({"secrets.json": b'{"device_key": "R1ZrZXk="}'}, ["R1ZrZXk="])
    provision.guard({"secrets.json": b'{"device_key": "b3duIGtleQ=="}'}, ["R1ZrZXk="])


def test_full_flash_is_refused_before_writing(prov, hub, tmp_path, start_sim_board):
    flash = tmp_path / "small"
    flash.mkdir()
    board = start_sim_board(flash, "--size", "16K")
    res = prov.run(board.port, "dev1")
    assert res.returncode == 1
    assert "too full" in res.stderr and "nothing was written" in res.stderr
    assert list(flash.iterdir()) == []


def test_board_that_does_not_answer(prov, tmp_path):
    master, slave = os.openpty()  # a port whose "board" never says anything
    try:
        port = os.ttyname(slave)
        res = subprocess.run(prov.args(port, "dev1", timeout=5), capture_output=True, text=True, timeout=120)
        assert res.returncode == 1
        assert "did not answer within 5 s" in res.stderr
    finally:
        os.close(slave)
        os.close(master)
    res = prov.run(str(tmp_path / "no-such-port"), "dev1")
    assert res.returncode == 1 and "cannot open" in res.stderr


def test_group_key_derivation_matches_keys_derive(prov, hub, sim_board, tmp_path):
    group = tmp_path / "group.key"
    group.write_text(base64.b64encode(os.urandom(64)).decode())
    res = prov.run(sim_board.port, "sensor-7", "--group-key-file", str(group), "--no-reset")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "keys.csv"
    k = subprocess.run([UPYHUB, "keys", "derive", "--group-key-file", str(group), "--ids", "sensor-7,sensor-8",
                        "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert k.returncode == 0 and k.stdout.strip() == "wrote 2 device keys to %s" % out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = list(csv.DictReader(out.open()))
    assert [r["registration_id"] for r in rows] == ["sensor-7", "sensor-8"]
    assert rows[0]["device_key"] == board_key(sim_board.flash)
    assert rows[0]["device_key"] not in k.stdout + k.stderr
    assert group.read_text() not in "".join(p.read_text(errors="replace") for p in sim_board.flash.rglob("*.json"))
    before = out.read_bytes()
    for ids, msg in (("Bad_Id", "registration id must be"), ("sensor-9", "exists")):
        again = subprocess.run([UPYHUB, "keys", "derive", "--group-key-file", str(group), "--ids", ids,
                                "--out", str(out)], capture_output=True, text=True, timeout=60)
        assert again.returncode == 2 and msg in again.stderr
    assert out.read_bytes() == before


def test_batch(prov, hub, tmp_path, start_sim_board):
    boards = []
    for i in range(2):
        flash = tmp_path / ("b%d" % i)
        flash.mkdir()
        boards.append(start_sim_board(flash))
    hub.add_device("batch-taken")
    rows = tmp_path / "devices.csv"
    rows.write_text("port,device_id\n%s,batch-1\n%s,batch-taken\n" % (boards[0].port, boards[1].port))
    cmd = [UPYHUB, "provision", "--batch", str(rows), "--no-reset"] + prov.common()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1
    assert "1 of 2 boards provisioned" in res.stdout
    assert "batch-1" in res.stdout and "FAILED" in res.stdout
    assert hub.service.get_device("batch-1")["authentication"]["symmetricKey"]["primaryKey"] == board_key(boards[0].flash)


def test_batch_prompts_to_swap_boards_on_one_port(prov, hub, sim_board, tmp_path):
    rows = tmp_path / "devices.csv"
    rows.write_text("%s,swap-1\n%s,swap-2\n" % (sim_board.port, sim_board.port))
    cmd = [UPYHUB, "provision", "--batch", str(rows), "--no-reset"] + prov.common()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prompt = proc.stderr.readline()
    while "swap in the board" not in prompt:
        assert prompt, "no prompt"
        prompt = proc.stderr.readline()
    assert "swap in the board for swap-2 on %s" % sim_board.port in prompt
    first = json.loads((sim_board.flash / "config.json").read_text())["device_id"]
    # The operator swaps boards: the one on the port now is a fresh board (an empty flash).
    for p in sorted(sim_board.flash.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    out, err = proc.communicate("\n", timeout=600)
    assert proc.returncode == 0, out + err
    assert first == "swap-1" and "2 of 2 boards provisioned" in out
    assert json.loads((sim_board.flash / "config.json").read_text())["device_id"] == "swap-2"
    keys = [hub.service.get_device(d)["authentication"]["symmetricKey"]["primaryKey"] for d in ("swap-1", "swap-2")]
    assert keys[0] != keys[1] and keys[1] == board_key(sim_board.flash)


# --- the board is checked before anything is written --------------------------------------------

@pytest.mark.parametrize("board", ["esp32", "rp2_pico_w"])
def test_board_of_another_kind_is_refused(prov, hub, sim_board, board):
    args = prov.args(sim_board.port, "dev1")
    args[args.index("--board") + 1] = board
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    errors = res.stderr.strip().splitlines()
    assert errors[-1].startswith("upyhub: error: the board on %s is not a %s board" % (sim_board.port, board))
    assert "'linux'" in errors[-1] and "nothing was written" in errors[-1]
    assert list(sim_board.flash.iterdir()) == []
    assert [d["deviceId"] for d in hub.service.list_devices()] == []


def test_board_provisioned_as_another_device_needs_force(prov, hub, sim_board):
    assert prov.run(sim_board.port, "dev1", "--no-reset").returncode == 0
    before = tree(sim_board.flash)
    res = prov.run(sim_board.port, "dev2", "--no-reset")
    assert res.returncode == 2
    assert "provisioned as device 'dev1'" in res.stderr and "--force" in res.stderr and "--remove-old" in res.stderr
    assert tree(sim_board.flash) == before
    res = prov.run(sim_board.port, "dev2", "--no-reset", "--force")
    assert res.returncode == 0, res.stderr
    assert "old identity dev1 is still registered on the hub" in res.stdout
    assert json.loads((sim_board.flash / "config.json").read_text())["device_id"] == "dev2"
    assert hub.service.get_device("dev1")  # kept, as the message said
    res = prov.run(sim_board.port, "dev3", "--no-reset", "--remove-old")
    assert res.returncode == 0, res.stderr
    assert "old identity dev2 removed from the hub" in res.stdout
    assert sorted(d["deviceId"] for d in hub.service.list_devices()) == ["dev1", "dev3"]
    assert accepted(hub, "dev3", board_key(sim_board.flash))


def test_wifi_changes_are_applied_and_secrets_are_private(prov, hub, sim_board, tmp_path):
    pw = tmp_path / "wifi.pw"
    pw.write_text("first-password")
    assert prov.run(sim_board.port, "dev1", "--wifi-ssid", "Home", "--wifi-password-file", str(pw),
                    "--no-reset").returncode == 0
    secrets = sim_board.flash / "secrets.json"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    key = board_key(sim_board.flash)
    pw.write_text("second-password")
    res = prov.run(sim_board.port, "dev1", "--wifi-ssid", "Office", "--wifi-password-file", str(pw), "--no-reset")
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "secrets.json" in res.stdout
    assert json.loads(secrets.read_text()) == {"device_key": key, "wifi_password": "second-password"}
    assert json.loads((sim_board.flash / "config.json").read_text())["wifi"] == {"ssid": "Office"}
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert "second-password" not in res.stdout + res.stderr
    # Not asked to change it: the board keeps its password, also when secrets.json is written again.
    res = prov.run(sim_board.port, "dev1", "--wifi-ssid", "Office", "--rotate-key", "--no-reset")
    assert res.returncode == 0, res.stderr
    assert json.loads(secrets.read_text())["wifi_password"] == "second-password"
    assert board_key(sim_board.flash) != key


@pytest.mark.parametrize("text", [
    "hostname=h.azure-devices.net;sharedaccesskeyname=iothubowner;sharedaccesskey=abc=",
    "HostName = h.azure-devices.net ; SharedAccessKeyName = registryReadWrite ; SharedAccessKey = abc=",
    "  SHAREDACCESSKEY=abc  ",
    "HostName=h.azure-devices.net;DeviceId=d1;SharedAccessKey=abc=",
    "SharedAccessSignature sr=h.azure-devices.net&sig=x&se=1&skn=iothubowner",
])
def test_guard_is_case_and_space_tolerant(text):
    with pytest.raises(UsageError, match="connection string or policy token"):
        provision.guard({"secrets.json": json.dumps({"wifi_password": text}).encode()}, [])
    with pytest.raises(UsageError):  # in any field, also JSON-escaped
        provision.guard({"config.json": json.dumps({"wifi": {"ssid": text}}, ensure_ascii=True)
                         .replace("=", "\\u003d").encode()}, [])


def test_guard_finds_keys_in_any_field():
    key = base64.b64encode(os.urandom(15) + b"\xff\xff\xff" + os.urandom(14)).decode()  # "////" inside
    spaced = key[:10] + " " + key[10:]
    escaped = '{"ntp": ["x", "%s"]}' % key.replace("/", "\\/")  # JSON's optional escape of "/"
    assert key not in escaped
    for text in (json.dumps({"wifi_password": key}), json.dumps({"wifi": {"ssid": spaced}}), escaped):
        with pytest.raises(UsageError, match="policy or group key"):
            provision.guard({"config.json": text.encode()}, [key])
    provision.guard({"config.json": b'{"wifi": {"ssid": "HostName-lab"}}'}, [key])  # a plain name is fine


def test_connection_string_as_wifi_password_is_refused(prov, hub, sim_board, tmp_path):
    pw = tmp_path / "wifi.pw"
    pw.write_text("hostname = %s ; sharedaccesskeyname=device;sharedaccesskey=%s"
                  % (hub.hostname, base64.b64encode(os.urandom(32)).decode()))
    res = prov.run(sim_board.port, "dev1", "--wifi-ssid", "home", "--wifi-password-file", str(pw))
    assert res.returncode == 2
    assert "secrets.json would hold a hub connection string" in res.stderr
    assert list(sim_board.flash.iterdir()) == []


def test_local_hub_from_its_data_folder(hub, sim_board):
    res = subprocess.run([UPYHUB, "provision", sim_board.port, "--device-id", "dev-data", "--board", "unix",
                          "--data", str(hub.data_dir), "--no-reset", "-o", "json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["device_id"] == "dev-data" and summary["hub"] == "created" and summary["check"] == "accepted"
    cfg = json.loads((sim_board.flash / "config.json").read_text())
    assert cfg["port"] == hub.mqtt_port and cfg["gateway"] == "127.0.0.1" and cfg["hostname"] == hub.hostname
    assert (sim_board.flash / "certs" / "active" / "roots.pem").read_bytes() == hub.ca_pem


def test_unresolvable_gateway_is_a_friendly_error(prov, sim_board):
    args = prov.args(sim_board.port, "dev1")
    args[args.index("--gateway") + 1] = "no-such-hub.invalid"
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("upyhub: error: cannot reach the hub's service API at "
                                                          "no-such-hub.invalid")
    assert "does not resolve" in res.stderr and "addrinfo" not in res.stderr and "Traceback" not in res.stderr
