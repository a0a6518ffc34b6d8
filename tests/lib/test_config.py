"""iothub.config on the unix port: a good flash loads with defaults; every bad field gets its own
clear line; secrets are never echoed."""
import base64
import json
import os

import pytest

LOAD = r"""
import json
from iothub import config
try:
    cfg, sec = config.load(%r)
    print(json.dumps({"ok": cfg, "secret_keys": sorted(sec)}))
except config.ConfigError as e:
    print(json.dumps({"problems": e.problems}))
"""

GOOD = {"hostname": "myhub.azure-devices.net", "device_id": "dev-1", "gateway": "127.0.0.1", "port": 8883}


def run(run_mp, flash, mpy=False):
    # .mpy in 40K on this 64-bit port (objects twice a board's size); the .py variant also pays for the compiler.
    p = run_mp(LOAD % str(flash), mpy=mpy, heapsize="40K" if mpy else "64K")
    assert p.returncode == 0, p.stderr + p.stdout
    return json.loads(p.stdout)


def write(flash, cfg, secrets):
    flash.mkdir(exist_ok=True)
    if cfg is not None:
        (flash / "config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    if secrets is not None:
        (flash / "secrets.json").write_text(secrets if isinstance(secrets, str) else json.dumps(secrets))


@pytest.mark.parametrize("mpy", [False, True], ids=["py", "mpy"])
def test_good_config_gets_defaults(run_mp, tmp_path, mpy):
    key = base64.b64encode(os.urandom(32)).decode()
    write(tmp_path, GOOD, {"device_key": key, "wifi_password": "pw"})
    out = run(run_mp, tmp_path, mpy)
    cfg = out["ok"]
    assert cfg["auth"] == "sas" and cfg["token_ttl"] == 3600 and cfg["keepalive"] == 60
    assert cfg["certs_dir"] == "certs" and cfg["telemetry_interval"] == 10
    assert out["secret_keys"] == ["device_key", "wifi_password"]


def test_every_bad_field_reported_once(run_mp, tmp_path):
    secret = base64.b64encode(os.urandom(32)).decode()[:-2] + "!!"  # not base64
    bad = {"hostname": "bad host", "device_id": "", "port": 0, "auth": "password", "token_ttl": 5,
           "keepalive": 5000, "telemetry_interval": -1, "ntp": [], "wifi": {"ssid": ""}, "gateway": ""}
    write(tmp_path, bad, {"device_key": secret, "policy_key": "c2VjcmV0"})
    problems = run(run_mp, tmp_path)["problems"]
    text = "\n".join(problems)
    for field in ("hostname", "device_id", "gateway", "port", "token_ttl", "keepalive", "telemetry_interval",
                  "ntp", "wifi", "auth", "'policy_key'"):
        assert sum(field in p for p in problems) >= 1, (field, problems)
    assert len(problems) == 11, problems
    assert secret not in text and "c2VjcmV0" not in text  # values of secrets never echoed
    assert all("\n" not in p for p in problems)


def test_bad_device_key_and_x509(run_mp, tmp_path):
    write(tmp_path, dict(GOOD), {"device_key": "c2hvcnQ="})  # decodes to 5 bytes
    assert run(run_mp, tmp_path)["problems"] == ["secrets.json: device_key must decode to 16..64 bytes"]
    write(tmp_path, dict(GOOD, auth="x509"), {})
    assert run(run_mp, tmp_path)["problems"] == [
        "config.json: x509 must name the device's cert and key files (auth is x509)"]
    write(tmp_path, dict(GOOD, auth="x509", x509={"cert": "d.crt", "key": "d.key"}), {})
    assert "ok" in run(run_mp, tmp_path)


def test_missing_and_broken_files(run_mp, tmp_path):
    assert run(run_mp, tmp_path)["problems"] == ["config.json: missing (%s/config.json)" % tmp_path]
    write(tmp_path, "{not json", None)
    problems = run(run_mp, tmp_path)["problems"]
    assert problems[0] == "config.json: not valid JSON"
    write(tmp_path, dict(GOOD), None)
    assert run(run_mp, tmp_path)["problems"] == [
        "secrets.json: missing (%s/secrets.json), the device key lives there" % tmp_path]
    write(tmp_path, dict(GOOD), "[1, 2]")
    assert run(run_mp, tmp_path)["problems"] == ["secrets.json: must hold a JSON object"]


def test_files_too_large_to_read_are_config_lines_not_memory_errors(run_mp, tmp_path):
    # A 4 MB config.json and a 1 MB key would not fit a board's heap: they are sized before reading.
    write(tmp_path, '{"hostname": "%s"}' % ("h" * (4 << 20)), json.dumps({"device_key": "A" * (1 << 20)}))
    problems = run(run_mp, tmp_path, mpy=True)["problems"]
    sizes = [(tmp_path / n).stat().st_size for n in ("config.json", "secrets.json")]
    assert problems == ["config.json: %d bytes, more than the 8192 this firmware reads" % sizes[0],
                        "secrets.json: %d bytes, more than the 2048 this firmware reads" % sizes[1]]


def test_outbox_larger_than_the_flash_is_not_a_config_error(run_mp, tmp_path):
    # A 64 KB littlefs cannot give the outbox 512 KB: the board still boots (the session then queues in RAM
    # and says so: tests/firmware/test_roots_flash_faults.py): a board that never connects cannot be fixed remotely.
    from flashimage import IMAGE

    img = tmp_path / "f.img"
    img.write_bytes(b"\xff" * 512 * 128)
    key = base64.b64encode(os.urandom(32)).decode()
    code = IMAGE + """
import json
mount("VfsLfs2", %r, mkfs=True)
for name, doc in (("config.json", %r), ("secrets.json", %r)):
    with open("/flash/" + name, "w") as f:
        f.write(json.dumps(doc))
from iothub import config
c = dict(json.load(open("/flash/config.json")), outbox_kb=512)
with open("/flash/config.json", "w") as f:
    f.write(json.dumps(c))
cfg, secrets = config.load("/flash")
print(json.dumps(cfg["outbox_kb"]))
""" % (str(img), GOOD, {"device_key": key})
    p = run_mp(code, mpy=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == 512


def test_dps_and_token_service_settings(run_mp, tmp_path):
    key = base64.b64encode(os.urandom(32)).decode()
    dps = {"id_scope": "0ne0000ABCD", "registration_id": "sensor-7", "gateway": "127.0.0.1"}
    # no hub yet: DPS assigns it; the defaults fill the endpoint
    write(tmp_path, {"dps": dps}, {"device_key": key})
    cfg = run(run_mp, tmp_path, mpy=True)["ok"]
    assert cfg["hostname"] is None and cfg["device_id"] is None
    assert cfg["dps"]["endpoint"] == "global.azure-devices-provisioning.net" and cfg["dps"]["port"] == 8883
    # an assignment on flash (JSON line + its SHA-256) is used; one for another registration, a torn or
    # altered one is not (the device registers again)
    import hashlib

    line = json.dumps({"id_scope": dps["id_scope"], "registration_id": "sensor-7", "hub": "h.azure-devices.net",
                       "device_id": "sensor-7"}).encode()
    good = line + b"\n" + hashlib.sha256(line).hexdigest().encode() + b"\n"
    for content, hub in ((good, "h.azure-devices.net"), (good[:-10], None), (good.replace(b"h.az", b"x.az"), None),
                         (good.replace(b"sensor-7", b"sensor-8"), None)):
        (tmp_path / "dps.json").write_bytes(content)
        assert run(run_mp, tmp_path, mpy=True)["ok"]["hostname"] == hub
    write(tmp_path, {"dps": dict(dps, registration_id="Bad_Id"), "auth": "token-service"}, {"device_key": key})
    problems = run(run_mp, tmp_path, mpy=True)["problems"]
    assert any("dps.registration_id" in p for p in problems)
    assert any("token_service must name" in p for p in problems)
    # the token service: its host, and a token secret (not a hub key) in secrets.json
    write(tmp_path, dict(GOOD, auth="token-service", token_service={"host": "tokens.example.com", "port": 8443}),
          {"token_secret": key})
    assert "ok" in run(run_mp, tmp_path, mpy=True)
    write(tmp_path, dict(GOOD, auth="token-service", token_service={"host": "tokens.example.com"}), {})
    assert run(run_mp, tmp_path, mpy=True)["problems"] == ["secrets.json: token_secret is missing"]
