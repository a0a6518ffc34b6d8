"""HMAC-SHA256 and strict base64 of lib/iothub/crypto.py, run on the unix port."""
import binascii
import json

import pytest

# RFC 4231 test cases 1-7 (case 5 is a truncated-output case: compare its prefix).
RFC4231 = [
    ("0b" * 20, b"Hi There".hex(),
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe".hex(), b"what do ya want for nothing?".hex(),
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    ("aa" * 20, "dd" * 50,
     "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    ("0102030405060708090a0b0c0d0e0f10111213141516171819", "cd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    ("0c" * 20, b"Test With Truncation".hex(),
     "a3b6167473100ee06e0c796c2955552b"),
    # keys longer than the block size (131 bytes): hashed first
    ("aa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ("aa" * 131, (b"This is a test using a larger than block-size key and a larger than block-size data. "
                  b"The key needs to be hashed before being used by the HMAC algorithm.").hex(),
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize("mpy", [False, True], ids=["py", "mpy"])
def test_rfc4231_vectors_on_the_unix_port(run_mp, mpy):
    code = (
        "import binascii, json\n"
        "from iothub.crypto import hmac_sha256\n"
        "for k, m, _ in json.loads(%r):\n"
        "    print(binascii.hexlify(hmac_sha256(binascii.unhexlify(k), binascii.unhexlify(m))).decode())\n"
    ) % json.dumps(RFC4231)
    out = run_mp(code, mpy=mpy, heapsize="32K")
    assert out.returncode == 0, out.stderr
    got = out.stdout.split()
    assert len(got) == len(RFC4231)
    for (_, _, want), mac in zip(RFC4231, got):
        assert mac.startswith(want)
        assert len(mac) == 64


def test_block_size_boundary_keys_match_cpython(run_mp):
    import hashlib
    import hmac

    keys = [bytes(range(n)) for n in (0, 1, 63, 64, 65, 200)]
    code = (
        "import binascii\n"
        "from iothub.crypto import hmac_sha256\n"
        "for n in (0, 1, 63, 64, 65, 200):\n"
        "    print(binascii.hexlify(hmac_sha256(bytes(range(n)), b'msg' * n)).decode())\n"
    )
    out = run_mp(code)
    assert out.returncode == 0, out.stderr
    want = [hmac.new(k, b"msg" * len(k), hashlib.sha256).hexdigest() for k in keys]
    assert out.stdout.split() == want


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "key is empty"),
        ("abc", "not a multiple of 4"),
        ("ab!d", "bad character"),
        ("a===", "bad padding"),
        ("ab=d", "bad character"),
        ("YWJj ZGVm", "not a multiple of 4"),
    ],
)
def test_b64decode_refuses_what_a2b_base64_would_silently_accept(run_mp, text, message):
    code = (
        "from iothub.crypto import b64decode\n"
        "try:\n"
        "    b64decode(%r)\n"
        "    print('accepted')\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
    ) % text
    out = run_mp(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused:") and message in out.stdout


def test_b64_round_trip(run_mp):
    code = (
        "from iothub.crypto import b64decode, b64encode\n"
        "for n in range(1, 70):\n"
        "    data = bytes((i * 7 + n) & 255 for i in range(n))\n"
        "    assert b64decode(b64encode(data)) == data, n\n"
        "print(b64encode(b'\\x00\\xff' * 3))\n"
    )
    out = run_mp(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == binascii.b2a_base64(b"\x00\xff" * 3, newline=False).decode()


def _mutations(seed, n):
    """Base64 texts of keys, some with one character changed, dropped, doubled or padded wrongly."""
    import base64
    import random

    rnd = random.Random(seed)
    odd = "=+/-_!. \n\t\u00e9\x00AQgw"
    out = []
    for i in range(n):
        text = base64.b64encode(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 66)))).decode()
        how = i % 5
        at = rnd.randrange(len(text))
        if how == 1:
            text = text[:at] + rnd.choice(odd) + text[at + 1:]
        elif how == 2:
            text = text[:at] + text[at + 1:] + rnd.choice(odd)
        elif how == 3:
            text = text.rstrip("=") + "=" * rnd.randint(0, 4)
        elif how == 4:
            text = text[:at] + rnd.choice(odd) * 2 + text[at + 2:]
        out.append(text)
    return out


@pytest.mark.parametrize("mpy", [False, True], ids=["py", "mpy"])
def test_b64decode_accepts_exactly_what_strict_base64_accepts(run_mp, tmp_path, mpy):
    # The rule (RFC 4648 without line breaks): a length that is a multiple of 4, only A-Z a-z 0-9 + /
    # before at most two "="; the bytes are CPython's. Same acceptance, same bytes, for valid texts and
    # near misses.
    import base64
    import os
    import re

    seed = int.from_bytes(os.urandom(4), "big")
    texts = _mutations(seed, 2000)
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in texts))
    code = (
        "import json, binascii\n"
        "from iothub.crypto import b64decode\n"
        "for line in open(%r):\n"
        "    try:\n"
        "        print(binascii.hexlify(b64decode(json.loads(line))).decode() or '-')\n"
        "    except ValueError as e:\n"
        "        print('refused')\n"
    ) % str(path)
    out = run_mp(code, mpy=mpy, heapsize="32K", timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    got = out.stdout.splitlines()
    assert len(got) == len(texts)
    accepted = 0
    for text, line in zip(texts, got):
        if len(text) % 4 == 0 and re.fullmatch("[A-Za-z0-9+/]+={0,2}", text):
            want = base64.b64decode(text).hex() or "-"
        else:
            want = "refused"
        assert line == want, "b64decode(%r) (seed %d)" % (text, seed)
        accepted += want != "refused"
    assert 300 < accepted < 1900  # both sides of the line were tried
