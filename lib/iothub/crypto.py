# HMAC-SHA256 on hashlib.sha256 alone (boards have no hmac module), and strict base64. No Python
# loop runs over key bytes: the pads are one integer XOR each, strictness is a length check.
import hashlib
import binascii

_BLOCK = 64
_IPAD = int.from_bytes(b"\x36" * _BLOCK, "big")
_OPAD = int.from_bytes(b"\x5c" * _BLOCK, "big")


def hmac_sha256(key, msg):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    k = int.from_bytes(key, "big") << (8 * (_BLOCK - len(key)))  # the key, zero-padded to a block
    inner = hashlib.sha256((k ^ _IPAD).to_bytes(_BLOCK, "big"))
    inner.update(msg)
    return hashlib.sha256((k ^ _OPAD).to_bytes(_BLOCK, "big") + inner.digest()).digest()


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
    pad = n - len(text.rstrip(b"="))
    if pad > 2:
        raise ValueError(what + " is not base64 (bad padding)")
    # Only base64 characters before the padding decode to exactly 3 bytes per 4 characters, less
    # one per "=". A character a2b_base64 skips, or an "=" it stops at, gives fewer (or an error).
    try:
        data = binascii.a2b_base64(text)
    except ValueError:
        data = b""
    if len(data) != n // 4 * 3 - pad:
        raise ValueError(what + " is not base64 (bad character)")
    return data


def b64encode(data):
    return binascii.b2a_base64(data, newline=False).decode()
