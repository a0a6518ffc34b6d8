"""`upyhub token`: the real CLI as a subprocess, against the device library's algorithm."""
import base64
import os
import pathlib
import subprocess
import sys
import time

import pytest

from sas_reference import reference_token

REF_KEY = "c2VjcmV0a2V5MTIzNDU2Nzg5MA=="

UPYHUB = str(pathlib.Path(sys.executable).with_name("upyhub"))
HUB = "myhub.azure-devices.net"


def upyhub(*args, stdin=None, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != "UPYHUB_KEY"}
    full_env.update(env or {})
    return subprocess.run([UPYHUB, *args], input=stdin, capture_output=True, text=True, env=full_env, timeout=60)


@pytest.fixture
def key():
    return base64.b64encode(os.urandom(32)).decode()


def se_of(token):
    return int(token.split("&se=")[1].split("&")[0])


def test_help_works():
    out = upyhub("token", "--help")
    assert out.returncode == 0
    assert "--derive" in out.stdout and "--connection-string" in out.stdout


def test_device_token_from_key_matches_reference(key):
    before = int(time.time())
    out = upyhub("token", "--hub", HUB, "--device", "dev1", "--key", key, "--ttl", "120")
    assert out.returncode == 0, out.stderr
    tok = out.stdout.strip()
    assert before + 120 <= se_of(tok) <= int(time.time()) + 120
    assert tok == reference_token(HUB + "/devices/dev1", key, se_of(tok))


def test_device_token_from_connection_string_on_stdin(key):
    cs = "HostName=%s;DeviceId=dev+2;SharedAccessKey=%s" % (HUB, key)
    out = upyhub("token", "--connection-string", "-", stdin=cs + "\n")
    assert out.returncode == 0, out.stderr
    tok = out.stdout.strip()
    assert tok == reference_token(HUB + "/devices/dev+2", key, se_of(tok))


def test_policy_token_from_connection_string_has_skn(key):
    cs = "HostName=%s;SharedAccessKeyName=registryRead;SharedAccessKey=%s" % (HUB, key)
    out = upyhub("token", "-c", cs, "--expiry", str(int(time.time()) + 999))
    assert out.returncode == 0, out.stderr
    tok = out.stdout.strip()
    assert tok.endswith("&skn=registryRead")
    assert tok == reference_token(HUB, key, se_of(tok), "registryRead")


def test_key_from_file_and_environment(key, tmp_path):
    f = tmp_path / "k"
    f.write_text(key + "\n")
    a = upyhub("token", "--hub", HUB, "-d", "d", "--key-file", str(f), "--expiry", "4000000000")
    b = upyhub("token", "--hub", HUB, "-d", "d", "--expiry", "4000000000", env={"UPYHUB_KEY": key})
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout == reference_token(HUB + "/devices/d", key, 4000000000) + "\n"


def test_verify_accepts_own_token_and_rejects_other_key(key):
    tok = upyhub("token", "--hub", HUB, "-d", "dev1", "--key", key).stdout.strip()
    ok = upyhub("token", "--verify", tok, "--key", key)
    assert ok.returncode == 0 and ok.stdout.startswith("valid: sr=%s/devices/dev1" % HUB)
    other = base64.b64encode(os.urandom(32)).decode()
    bad = upyhub("token", "--verify", tok, "--key", other)
    assert bad.returncode == 1 and "signature does not match" in bad.stderr


def test_verify_reports_expired_token():
    expired = reference_token(HUB + "/devices/dev1", REF_KEY, 1700000000)
    out = upyhub("token", "--verify", expired, "--key", REF_KEY)
    assert out.returncode == 1 and "expired" in out.stderr


def test_derive_matches_device_library_formula(key, run_mp):
    out = upyhub("token", "--derive", "--key", key, "--registration-id", "sensor-7")
    assert out.returncode == 0, out.stderr
    dev = run_mp("from iothub import sas\nprint(sas.derive_device_key(%r, 'sensor-7'))" % key)
    assert out.stdout.strip() == dev.stdout.strip() != ""


BAD = {
    "non-base64 key": (["--hub", HUB, "-d", "d", "--key", "###"], "not valid base64"),
    "empty key": (["--hub", HUB, "-d", "d", "--key", ""], "key is empty"),
    "short key": (["--hub", HUB, "-d", "d", "--key", "YWJj"], "16..64 bytes"),
    "no key": (["--hub", HUB, "-d", "d"], "no key"),
    "empty device id": (["--hub", HUB, "-d", "", "--key", "K"], "device id is empty"),
    "over-long device id": (["--hub", HUB, "-d", "a" * 129, "--key", "K"], "longer than 128"),
    "illegal device id": (["--hub", HUB, "-d", "a/b", "--key", "K"], "does not allow"),
    "non-integer ttl": (["--hub", HUB, "-d", "d", "--key", "K", "--ttl", "1h"], "not an integer"),
    "non-integer expiry": (["--hub", HUB, "-d", "d", "--key", "K", "--expiry", "soon"], "not an integer"),
    "past expiry": (["--hub", HUB, "-d", "d", "--key", "K", "--expiry", "1700000000"], "in the past"),
    "negative ttl": (["--hub", HUB, "-d", "d", "--key", "K", "--ttl", "-5"], "positive"),
    "ttl and expiry": (["--hub", HUB, "-d", "d", "--key", "K", "--ttl", "5", "--expiry", "4000000000"], "not both"),
    "bad connection string": (["-c", "garbage"], "Name=value"),
    "connection string without key": (["-c", "HostName=%s;DeviceId=d" % HUB], "no SharedAccessKey"),
    "hub token without policy": (["--hub", HUB, "--key", "K"], "needs --policy"),
    "bad hostname": (["--hub", "bad host", "-d", "d", "--key", "K"], "not a DNS name"),
    "derive without registration id": (["--derive", "--key", "K"], "--registration-id"),
    "derive bad registration id": (["--derive", "--key", "K", "--registration-id", "Bad_Id"], "lowercase"),
    "unknown flag": (["--frobnicate"], "unrecognized"),
    "malformed token": (["--verify", "SharedAccessSignature sr=x", "--key", "K"], "needs sr, sig and se"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_line_and_never_the_key(case, key):
    args, message = BAD[case]
    args = [key if a == "K" else a for a in args]
    out = upyhub("token", *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("upyhub: error: ") and message in lines[0], out.stderr
    assert key not in out.stderr
