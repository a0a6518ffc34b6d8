# HMAC-SHA256 on hashlib.sha256 alone (boards have no hmac module), and strict base64.
import hashlib
import binascii

_BLOCK = 64
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def hmac_sha256(key, msg):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    pad = bytearray(_BLOCK)
    pad[: len(key)] = key
    for i in range(_BLOCK):
        pad[i] ^= 0x36
    inner = hashlib.sha256(pad)
    inner.update(msg)
    inner = inner.digest()
    for i in range(_BLOCK):
        pad[i] ^= 0x36 ^ 0x5C
    outer = hashlib.sha256(pad)
    outer.update(inner)
    return outer.digest()


def b64decode(text, what="key"):
    # Strict: MicroPython's a2b_base64 skips characters it does not know, so a typo
    # would silently give another key. Never echo the text: it is a secret.
    if isinstance(text, str):
        text = text.encode()
    n = len(text)
    if n == 0:
        raise ValueError(what + " is empty")
    if n % 4:
        raise ValueError(what + " is not base64 (length is not a multiple of 4)")
    body = text.rstrip(b"=")
    if n - len(body) > 2:
        raise ValueError(what + " is not base64 (bad padding)")
    for c in body:
        if c not in _B64:
            raise ValueError(what + " is not base64 (bad character)")
    try:
        return binascii.a2b_base64(text)
    except Exception:
        raise ValueError(what + " is not base64")


def b64encode(data):
    return binascii.b2a_base64(data)[:-1].decode()
