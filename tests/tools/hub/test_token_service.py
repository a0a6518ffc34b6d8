"""The token service (`upyhub hub token-service serve`): devices authenticate with a per-device secret of
the solution's own CSV registry (HMAC over a single-use nonce) and get a device-scoped SAS token signed
by a DeviceConnect policy; the hub accepts it. Secrets are made at test time and never logged."""
import base64
import json
import os
import subprocess
import sys
import time

import pytest

from hubdev import Device, wait_for
from tokendev import TokenServiceProc
from upyhub import sas
from upyhub.hub import tokenservice

pytestmark = pytest.mark.slow


def registry_with(tmp_path, *devices):
    path = tmp_path / "devices.csv"
    secrets = {d: tokenservice.add_device(path, d) for d in devices}
    return path, secrets


def test_a_device_with_no_hub_key_connects(mhub, tmp_path):
    mhub.add_device("ts-dev")  # its keys stay in the hub: the device never sees them
    path, secrets = registry_with(tmp_path, "ts-dev")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with TokenServiceProc(mhub, path) as ts:
        doc = ts.token("ts-dev", secrets["ts-dev"])
        tok = sas.parse(doc["sasToken"])
        assert doc["sasToken"].startswith("SharedAccessSignature sr=%s%%2Fdevices%%2Fts-dev&sig=" % mhub.hostname)
        assert tok.sr == "%s/devices/ts-dev" % mhub.hostname and tok.skn == "device" and tok.se == doc["expiresOn"]
        assert time.time() < doc["expiresOn"] <= time.time() + 600
        with Device(mhub, "ts-dev", doc["sasToken"]) as d:
            assert d.wait_connack() == 0
            d.publish("devices/ts-dev/messages/events/", b'{"via": "token service"}').wait_for_publish()
        rows = wait_for(lambda: mhub.service.telemetry(device="ts-dev"), what="telemetry")
        assert json.loads(rows[-1]["body"]) == {"via": "token service"}
        assert "connected ts-dev from" in mhub.log() and "(policy device)" in mhub.log()
        # a token for one device does not connect another
        mhub.add_device("ts-other")
        with Device(mhub, "ts-other", doc["sasToken"]) as d:
            assert d.wait_connack() == 5
        logs = ts.log() + mhub.log()
    assert "issued a token" in logs
    for secret in (secrets["ts-dev"], doc["sasToken"], tok.sig):
        assert secret not in logs


def test_nonces_are_single_use_and_bad_requests_are_refused(mhub, tmp_path):
    path, secrets = registry_with(tmp_path, "ts-a", "ts-b")
    with TokenServiceProc(mhub, path, "--nonce-ttl", "2") as ts:
        status, ch = ts.call("GET", "/challenge?deviceId=ts-a")
        assert status == 200 and len(ch["nonce"]) == 43 and ch["expiresOn"] >= int(time.time())
        nonce = ch["nonce"]
        mac = tokenservice.compute_mac(secrets["ts-a"], "ts-a", nonce)
        good = {"deviceId": "ts-a", "nonce": nonce, "mac": mac}
        assert ts.call("POST", "/token", good)[0] == 200
        status, err = ts.call("POST", "/token", good)  # replayed
        assert status == 401 and err == {"error": "Unauthorized", "message": "nonce unknown, expired or already used"}
        # a wrong mac uses the nonce up too
        nonce = ts.call("GET", "/challenge?deviceId=ts-a")[1]["nonce"]
        wrong = tokenservice.compute_mac(secrets["ts-b"], "ts-a", nonce)
        assert ts.call("POST", "/token", {"deviceId": "ts-a", "nonce": nonce, "mac": wrong})[0] == 401
        right = tokenservice.compute_mac(secrets["ts-a"], "ts-a", nonce)
        assert ts.call("POST", "/token", {"deviceId": "ts-a", "nonce": nonce, "mac": right})[0] == 401
        # a nonce issued to ts-b does not serve ts-a
        nonce = ts.call("GET", "/challenge?deviceId=ts-b")[1]["nonce"]
        status, err = ts.call("POST", "/token", {"deviceId": "ts-a", "nonce": nonce,
                                                 "mac": tokenservice.compute_mac(secrets["ts-a"], "ts-a", nonce)})
        assert status == 401 and "another device" in err["message"]
        # an expired nonce (--nonce-ttl 2)
        ch = ts.call("GET", "/challenge?deviceId=ts-a")[1]
        wait_for(lambda: time.time() > ch["expiresOn"] + 1, what="the nonce to expire")
        late = {"deviceId": "ts-a", "nonce": ch["nonce"],
                "mac": tokenservice.compute_mac(secrets["ts-a"], "ts-a", ch["nonce"])}
        assert ts.call("POST", "/token", late)[0] == 401
        # malformed requests: 400; unknown device or endpoint: 404
        bad = [("GET", "/challenge", None, None), ("GET", "/challenge?deviceId=bad%2Fid", None, None),
               ("POST", "/token", None, "{not json"), ("POST", "/token", [1, 2], None),
               ("POST", "/token", {"deviceId": "ts-a", "nonce": 5, "mac": "x"}, None),
               ("POST", "/token", {"deviceId": "ts-a", "nonce": "n", "mac": "x" * 5000}, None),
               ("POST", "/token", None, "\xff".encode("latin-1"))]
        for method, url, body, raw in bad:
            status, err = ts.call(method, url, body, raw)
            assert status == 400 and err["error"] == "BadRequest", (url, body, raw, err)
        nonce = ts.call("GET", "/challenge?deviceId=ts-a")[1]["nonce"]
        status, err = ts.call("POST", "/token", {"deviceId": "ts-a", "nonce": nonce, "mac": "not base64!"})
        assert status == 400
        assert ts.call("GET", "/challenge?deviceId=nobody")[0] == 404
        assert ts.call("POST", "/token", {"deviceId": "nobody", "nonce": "n", "mac": "bWFj"})[0] == 404
        assert ts.call("GET", "/admin")[0] == 404 and ts.call("DELETE", "/token")[0] == 404
        logs = ts.log()
    assert "Traceback" not in logs and secrets["ts-a"] not in logs and secrets["ts-b"] not in logs


def test_a_revoked_device_gets_no_token_and_is_dropped_at_expiry(mhub, tmp_path):
    mhub.add_device("ts-revoked")
    path, secrets = registry_with(tmp_path, "ts-revoked")
    with TokenServiceProc(mhub, path, "--ttl", "20") as ts:
        doc = ts.token("ts-revoked", secrets["ts-revoked"])
        with Device(mhub, "ts-revoked", doc["sasToken"]) as d:
            assert d.wait_connack() == 0
            pending = ts.call("GET", "/challenge?deviceId=ts-revoked")[1]["nonce"]  # asked for before the revocation
            out = subprocess.run([sys.executable, "-m", "upyhub", "hub", "token-service", "device", "disable",
                                  "ts-revoked", "--registry", str(path)], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            status, err = ts.call("GET", "/challenge?deviceId=ts-revoked")
            assert status == 403 and err["error"] == "Forbidden"
            mac = tokenservice.compute_mac(secrets["ts-revoked"], "ts-revoked", pending)
            assert ts.call("POST", "/token", {"deviceId": "ts-revoked", "nonce": pending, "mac": mac})[0] == 403
            d.wait_disconnected(timeout=120)  # the hub drops it when its token expires, not before
            assert time.time() >= doc["expiresOn"]
        assert "closing ts-revoked: SAS token expired" in mhub.log()
        with Device(mhub, "ts-revoked", doc["sasToken"]) as d:
            assert d.wait_connack() == 5
        # re-enabled: tokens again
        tokenservice.set_enabled(path, "ts-revoked", True)
        with Device(mhub, "ts-revoked", ts.token("ts-revoked", secrets["ts-revoked"])["sasToken"]) as d:
            assert d.wait_connack() == 0


def serve_args(hub, tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "upyhub", "hub", "token-service", "serve", "--data",
                           str(hub.data_dir), "--port", "0", "--bind", "127.0.0.1", *args],
                          capture_output=True, text=True, timeout=120)


def one_line_error(out, status=2):
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr)
    assert out.stderr.startswith("upyhub: error: ") and out.stderr.count("\n") == 1, out.stderr
    return out.stderr


def test_a_policy_without_device_connect_cannot_be_used(mhub, tmp_path):
    path, _ = registry_with(tmp_path, "ts-p")
    for policy in ("service", "registryRead", "registryReadWrite"):
        err = one_line_error(serve_args(mhub, tmp_path, "--registry", str(path), "--policy", policy))
        assert "has no DeviceConnect" in err
    assert "no shared access policy 'nosuch'" in one_line_error(
        serve_args(mhub, tmp_path, "--registry", str(path), "--policy", "nosuch"))


def test_the_custom_registry_file(mhub, tmp_path):
    def cli(*args, status=0):
        out = subprocess.run([sys.executable, "-m", "upyhub", "hub", "token-service", "device", *args,
                              "--registry", str(path)], capture_output=True, text=True, timeout=120)
        if status:
            return one_line_error(out, status)
        assert out.returncode == 0, out.stderr
        return out.stdout

    path = tmp_path / "reg.csv"
    cli("add", "ts-c1")
    cli("add", "ts-c2", "--disabled")
    assert "already" in cli("add", "ts-c1", status=1)
    assert "not allow" in cli("add", "bad/id", status=2)
    docs = json.loads(cli("list", "-o", "json"))
    assert docs == [{"deviceId": "ts-c1", "enabled": True}, {"deviceId": "ts-c2", "enabled": False}]
    secrets = [row.split(",")[1] for row in path.read_text().splitlines()[1:]]
    assert all(len(base64.b64decode(s)) == 32 for s in secrets)
    assert not any(s in cli("list") for s in secrets)
    cli("enable", "ts-c2")
    cli("remove", "ts-c1")
    assert "is not in" in cli("remove", "ts-c1", status=1)
    assert [d["deviceId"] for d in json.loads(cli("list", "-o", "json"))] == ["ts-c2"]

    # bad files refuse to start, one line naming the problem (never a secret)
    cases = {"device_id,secret,enabled\n": "first line must be",
             "device_id,secret_b64,enabled\nx,c2hvcnQ=,true\n": "line 2: secret_b64 must decode to 16..64 bytes",
             "device_id,secret_b64,enabled\nx,%s,maybe\n" % secrets[0]: "line 2: enabled must be true or false",
             "device_id,secret_b64,enabled\nx,%s,true\nx,%s,true\n" % (secrets[0], secrets[0]): "listed twice"}
    for text, expected in cases.items():
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        os.chmod(bad, 0o600)
        err = one_line_error(serve_args(mhub, tmp_path, "--registry", str(bad)))
        assert expected in err and secrets[0] not in err
    os.chmod(path, 0o644)
    assert "chmod 600" in one_line_error(serve_args(mhub, tmp_path, "--registry", str(path)))
    os.chmod(path, 0o600)
    # a bad edit while serving keeps the previous registry
    with TokenServiceProc(mhub, path) as ts:
        assert ts.call("GET", "/challenge?deviceId=ts-c2")[0] == 200
        content = path.read_text()
        path.write_text(content + "broken line\n")
        assert ts.call("GET", "/challenge?deviceId=ts-c2")[0] == 200
        assert "not reloaded (keeping the previous one)" in ts.log()
        path.write_text(content.replace("true", "false"))
        assert ts.call("GET", "/challenge?deviceId=ts-c2")[0] == 403
