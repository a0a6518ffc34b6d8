"""SAS tokens minted by lib/iothub/sas.py on the unix port, against an independent CPython reference."""
import base64
import hashlib
import hmac
import json
import os
import random
import string

import pytest
from sas_reference import reference_token

REF_URI = "myhub.azure-devices.net/devices/dev1"
REF_KEY = "c2VjcmV0a2V5MTIzNDU2Nzg5MA=="
REF_TOKEN = ("SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1"
             "&sig=T7Q%2FJ%2FAIuIEGu7iHirbmVLwplEeUmDRK9PxaJibeBME%3D&se=1700000000")
ID_CHARS = string.ascii_letters + string.digits + "-.+%_#*?!(),:=@$'"


def random_cases(n, seed):
    rnd = random.Random(seed)
    cases = []
    for i in range(n):
        labels = ["".join(rnd.choice(string.ascii_lowercase + string.digits) for _ in range(rnd.randint(1, 20)))
                  for _ in range(rnd.randint(1, 3))]
        hub = ".".join(labels) + ".azure-devices.net"
        if i < len(ID_CHARS):  # every allowed character, alone and in company
            dev = ID_CHARS[i] * rnd.randint(1, 3) + "x"
        else:
            dev = "".join(rnd.choice(ID_CHARS) for _ in range(rnd.randint(1, 128)))
        key = base64.b64encode(os.urandom(rnd.choice([16, 32, 33, 48, 64]))).decode()
        expiry = rnd.randint(1, 0xFFFFFFFF)
        policy = rnd.choice([None, None, "iothubowner", "device", "my policy/x"])
        cases.append([hub, dev, key, expiry, policy])
    cases.append(["h.azure-devices.net", ID_CHARS, base64.b64encode(os.urandom(32)).decode(), 1795910401, None])
    return cases


# One case per line, read line by line: the heap stays small under -X heapsize=32K.
MINT_LOOP = """
import json
from iothub import sas
with open(%r) as f:
    for line in f:
        hub, dev, key, se, pol = json.loads(line)
        print(sas.token(hub + "/devices/" + dev, key, se, pol))
"""


@pytest.mark.parametrize("mpy", [False, True], ids=["py", "mpy"])
def test_tokens_byte_identical_to_cpython_for_random_cases(run_mp, tmp_path, mpy):
    seed = int.from_bytes(os.urandom(4), "big")
    cases = random_cases(1000, seed)
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    out = run_mp(MINT_LOOP % str(path), mpy=mpy, heapsize="32K", timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    got = out.stdout.splitlines()
    assert len(got) == len(cases)
    for (hub, dev, key, se, pol), tok in zip(cases, got):
        if tok != reference_token(hub + "/devices/" + dev, key, se, pol):
            pytest.fail("token differs for device id %r, expiry %d (seed %d)" % (dev, se, seed))


@pytest.mark.parametrize("mpy", [False, True], ids=["py", "mpy"])
def test_reference_token_from_iothub_facts(run_mp, mpy):
    out = run_mp("from iothub import sas\nprint(sas.token(%r, %r, 1700000000))" % (REF_URI, REF_KEY),
                 mpy=mpy, heapsize="32K")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == REF_TOKEN
    assert reference_token(REF_URI, REF_KEY, 1700000000) == REF_TOKEN


def test_device_token_is_scoped_to_the_device_and_expires_after_ttl(run_mp):
    key = base64.b64encode(os.urandom(32)).decode()
    code = (
        "from iothub import sas, clock\n"
        "t0 = clock.now()\n"
        "tok = sas.device_token('h1.azure-devices.net', 'dev-1', %r, ttl=600)\n"
        "print(t0)\nprint(tok)\n"
    ) % key
    out = run_mp(code)
    assert out.returncode == 0, out.stderr
    t0, tok = out.stdout.split("\n")[:2]
    se = int(tok.rsplit("se=", 1)[1])
    assert 600 <= se - int(t0) <= 601
    assert tok == reference_token("h1.azure-devices.net/devices/dev-1", key, se)


def test_derive_device_key_matches_dps_formula(run_mp):
    group = base64.b64encode(os.urandom(64)).decode()
    ids = ["sensor-%d" % i for i in range(20)] + ["a", "x" * 128]
    code = "from iothub import sas\nfor r in %r:\n    print(sas.derive_device_key(%r, r))\n" % (ids, group)
    out = run_mp(code, mpy=True, heapsize="32K")
    assert out.returncode == 0, out.stderr
    want = [base64.b64encode(hmac.new(base64.b64decode(group), r.encode(), hashlib.sha256).digest()).decode()
            for r in ids]
    assert out.stdout.split() == want


def test_epoch_2000_clock_is_detected(run_mp):
    code = (
        "from iothub import clock\n"
        "print(clock.epoch_offset(lambda t: (2000, 1, 1, 0, 0, 0, 5, 1)))\n"
        "print(clock.epoch_offset(lambda t: (1970, 1, 1, 0, 0, 0, 3, 1)))\n"
        "print(clock.epoch_offset())\n"
    )
    out = run_mp(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["946684800", "0", "0"]  # the unix port counts from 1970


GOOD_KEY = base64.b64encode(b"k" * 32).decode()
BAD_INPUT = {
    "empty key": ("sas.token('h/devices/d', '', 1800000000)", "key is empty"),
    "non-base64 key": ("sas.token('h/devices/d', 'not*base64!', 1800000000)", "not base64"),
    "short key": ("sas.token('h/devices/d', 'YWJj', 1800000000)", "16..64 bytes"),
    "empty device id": ("sas.device_token('h.net', '', GOOD, ttl=60)", "device id is empty"),
    "over-long device id": ("sas.device_token('h.net', 'a' * 129, GOOD, ttl=60)", "longer than 128"),
    "slash in device id": ("sas.device_token('h.net', 'a/b', GOOD, ttl=60)", "does not allow"),
    "space in device id": ("sas.device_token('h.net', 'a b', GOOD, ttl=60)", "does not allow"),
    "non-ascii device id": ("sas.device_token('h.net', 'caf\\u00e9', GOOD, ttl=60)", "does not allow"),
    "bad hostname": ("sas.device_token('h..net', 'd', GOOD, ttl=60)", "not a DNS name"),
    "string expiry": ("sas.token('h/devices/d', GOOD, '1800000000')", "must be an integer"),
    "float expiry": ("sas.token('h/devices/d', GOOD, 1.8e9)", "must be an integer"),
    "bool expiry": ("sas.token('h/devices/d', GOOD, True)", "must be an integer"),
    "negative expiry": ("sas.token('h/devices/d', GOOD, -5)", "out of range"),
    "past expiry": ("sas.device_token('h.net', 'd', GOOD, expiry=1700000000)", "in the past"),
    "zero ttl": ("sas.device_token('h.net', 'd', GOOD, ttl=0)", "positive integer"),
    "unset clock": ("clock.now = lambda: 86400\nsas.device_token('h.net', 'd', GOOD, ttl=60)", "clock is not set"),
    "clock at epoch 2000": ("clock.now = lambda: 946684800 + 5\nsas.device_token('h.net', 'd', GOOD)",
                            "clock is not set"),
    "bad registration id": ("sas.derive_device_key(GOOD, 'Upper')", "lowercase"),
    "non-base64 group key": ("sas.derive_device_key('x', 'reg')", "group key"),
}


@pytest.mark.parametrize("mpy", [False, True], ids=["py", "mpy"])
@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_refused_with_a_clear_message(run_mp, case, mpy):
    stmt, message = BAD_INPUT[case]
    code = (
        "from iothub import sas, clock\n"
        "GOOD = %r\n"
        "try:\n"
        "%s\n"
        "    print('MINTED')\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
    ) % (GOOD_KEY, "\n".join("    " + line for line in stmt.split("\n")))
    out = run_mp(code, mpy=mpy)
    assert out.returncode == 0, out.stderr
    assert "MINTED" not in out.stdout
    assert out.stdout.startswith("refused:") and message in out.stdout, out.stdout
    assert GOOD_KEY not in out.stdout  # the key is never echoed back


HOST_RE = r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
ID_RE = r"^[A-Za-z0-9\-.+%_#*?!(),:=@$']+$"


@pytest.mark.parametrize("mpy", [False, True], ids=["py", "mpy"])
def test_hostname_and_device_id_checks_match_the_documented_rules(run_mp, tmp_path, mpy):
    # Random names near the rules' edges, each checked on the device and against IoT Hub's rules written
    # as regular expressions on CPython; a refused device id names its first bad character.
    import re

    seed = int.from_bytes(os.urandom(4), "big")
    rnd = random.Random(seed)
    alphabet = "ab9Z-..-" + "-.+%_#*?!(),:=@$'" + "/ \u00e9~&\x00"
    names = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 12))) for _ in range(3000)]
    names += ["a.b-c.d", "-a.b", "a-.b", "a.-b", "a..b", ".a", "a.", "a-", "A9.z0-q"]
    path = tmp_path / "names.jsonl"
    path.write_text("".join(json.dumps(n) + "\n" for n in names))
    code = (
        "import json\n"
        "from iothub import sas\n"
        "for line in open(%r):\n"
        "    name = json.loads(line)\n"
        "    for check in (sas.check_hostname, sas.check_device_id):\n"
        "        try:\n"
        "            check(name)\n"
        "            print('ok')\n"
        "        except ValueError as e:\n"
        "            print(json.dumps(str(e)))\n"
    ) % str(path)
    out = run_mp(code, mpy=mpy, heapsize="32K", timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    got = out.stdout.splitlines()
    assert len(got) == 2 * len(names)
    for i, name in enumerate(names):
        host, dev = got[2 * i], got[2 * i + 1]
        assert (host == "ok") == bool(re.match(HOST_RE, name)), "hostname %r (seed %d)" % (name, seed)
        plain = name.isascii() and name.isprintable()  # MicroPython's repr() escapes other characters its own way
        if host != "ok":
            msg = "hub hostname is not a DNS name: %r" % name
            assert json.loads(host) == msg if plain else json.loads(host).startswith(msg[:32])
        assert (dev == "ok") == bool(re.match(ID_RE, name)), "device id %r (seed %d)" % (name, seed)
        if dev != "ok":
            bad = next(c for c in name if not re.match(ID_RE, c))
            msg = "device id has a character IoT Hub does not allow: %r" % bad
            assert json.loads(dev) == msg if plain else json.loads(dev).startswith(msg[:50])
