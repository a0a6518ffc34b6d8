# Shared access signature tokens as Azure IoT Hub checks them, minted on the chip.
#   SharedAccessSignature sr={quote(uri)}&sig={quote(b64(hmac(key, quote(uri) + "\n" + se)))}&se={se}[&skn={policy}]
# quote() is the Azure SDKs' urllib.parse.quote(s, safe=""): only A-Z a-z 0-9 _ . - ~ stay.
from iothub import clock
from iothub.crypto import hmac_sha256, b64decode, b64encode
from iothub.quote import quote

MAX_ID = 128
_MAX_SE = 0xFFFFFFFF
# Character checks run in C: s.strip(chars) is empty exactly when every character of s is in chars.
# strip() tries the chars in order, so the commonest come first.
# Device ids: ASCII letters, digits and "-.+%_#*?!(),:=@$'" (IoT Hub's documented set).
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-._ABCDEFGHIJKLMNOPQRSTUVWXYZ+%#*?!(),:=@$'"
_HOST_CHARS = "abcdefghijklmnopqrstuvwxyz.-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# What quote() leaves as it is, and "/" (escaped by _quote with str.replace).
_URI_CHARS = "abcdefghijklmnopqrstuvwxyz./-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_~"


def check_device_id(device_id):
    if not isinstance(device_id, str) or not device_id:
        raise ValueError("device id is empty")
    if len(device_id) > MAX_ID:
        raise ValueError("device id is longer than %d characters" % MAX_ID)
    if device_id.strip(_ID_CHARS):
        for ch in device_id:  # name the first one (only on the way to refusing)
            if ch not in _ID_CHARS:
                raise ValueError("device id has a character IoT Hub does not allow: %r" % ch)
    return device_id


def check_hostname(hostname):
    if not isinstance(hostname, str) or not hostname:
        raise ValueError("hub hostname is empty")
    if len(hostname) > 253:
        raise ValueError("hub hostname is longer than 253 characters")
    # labels of letters, digits and "-", none empty, none starting or ending with "-"
    if (hostname.strip(_HOST_CHARS) or hostname[0] in "-." or hostname[-1] in "-." or ".." in hostname
            or ".-" in hostname or "-." in hostname):
        raise ValueError("hub hostname is not a DNS name: %r" % hostname)
    return hostname


def check_registration_id(reg_id):
    if not isinstance(reg_id, str) or not reg_id:
        raise ValueError("registration id is empty")
    if len(reg_id) > MAX_ID:
        raise ValueError("registration id is longer than %d characters" % MAX_ID)
    for ch in reg_id:
        if not (("a" <= ch <= "z") or ("0" <= ch <= "9") or ch == "-"):
            raise ValueError("registration id may hold only lowercase letters, digits and '-': %r" % ch)
    return reg_id


def _check_expiry(expiry):
    if isinstance(expiry, bool) or not isinstance(expiry, int):
        raise ValueError("expiry must be an integer (Unix seconds)")
    if expiry <= 0 or expiry > _MAX_SE:
        raise ValueError("expiry is out of range")
    return expiry


def _key(key_b64):
    key = b64decode(key_b64)
    if not 16 <= len(key) <= 64:
        raise ValueError("key must decode to 16..64 bytes (IoT Hub's rule), not %d" % len(key))
    return key


def _quote(s):
    # quote(s), in C when s has nothing to escape but "/": a checked hostname with a device id of
    # letters, digits and "-._".
    if s.strip(_URI_CHARS):
        return quote(s)
    return s.replace("/", "%2F")


def token(resource_uri, key_b64, expiry, policy=None):
    # Pure: no clock. The token for any resource URI and absolute expiry.
    if not isinstance(resource_uri, str) or not resource_uri:
        raise ValueError("resource URI is empty")
    _check_expiry(expiry)
    if policy is not None and (not isinstance(policy, str) or not policy):
        raise ValueError("policy name is empty")
    key = _key(key_b64)
    sr = _quote(resource_uri)
    sig = b64encode(hmac_sha256(key, ("%s\n%d" % (sr, expiry)).encode()))
    sig = sig.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")  # quote() of base64
    tok = "SharedAccessSignature sr=%s&sig=%s&se=%d" % (sr, sig, expiry)
    if policy is not None:
        tok += "&skn=" + quote(policy)
    return tok


def expiry_from_ttl(ttl, now=None):
    # Absolute expiry ttl seconds from now; refuses an unset clock.
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise ValueError("ttl must be a positive integer of seconds")
    t = clock.require_set() if now is None else now
    if t < clock.BUILD_TIME:
        raise ValueError("clock is not set (it reads before the firmware's build date): set it by NTP first")
    return t + ttl


def device_token(hostname, device_id, key_b64, ttl=3600, expiry=None):
    # The token a device connects with: scoped to {hostname}/devices/{id}, signed by its own key.
    check_hostname(hostname)
    check_device_id(device_id)
    if expiry is None:
        expiry = expiry_from_ttl(ttl)
    else:
        _check_expiry(expiry)
        if expiry <= clock.require_set():
            raise ValueError("expiry is in the past")
    return token(hostname + "/devices/" + device_id, key_b64, expiry)


def derive_device_key(group_key_b64, registration_id):
    # DPS group enrollment: base64(HMAC-SHA256(base64decode(groupKey), registrationId)).
    check_registration_id(registration_id)
    return b64encode(hmac_sha256(b64decode(group_key_b64, "group key"), registration_id.encode()))
