# Shared access signature tokens as Azure IoT Hub checks them, minted on the chip.
#   SharedAccessSignature sr={quote(uri)}&sig={quote(b64(hmac(key, quote(uri) + "\n" + se)))}&se={se}[&skn={policy}]
# quote() is the Azure SDKs' urllib.parse.quote(s, safe=""): only A-Z a-z 0-9 _ . - ~ stay.
from iothub import clock
from iothub.crypto import hmac_sha256, b64decode, b64encode
from iothub.quote import quote

MAX_ID = 128
# Device ids: ASCII letters, digits and these (IoT Hub's documented set).
_ID_EXTRA = "-.+%_#*?!(),:=@$'"
_MAX_SE = 0xFFFFFFFF


def _alnum(ch):
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9")


def check_device_id(device_id):
    if not isinstance(device_id, str) or not device_id:
        raise ValueError("device id is empty")
    if len(device_id) > MAX_ID:
        raise ValueError("device id is longer than %d characters" % MAX_ID)
    for ch in device_id:
        if not (_alnum(ch) or ch in _ID_EXTRA):
            raise ValueError("device id has a character IoT Hub does not allow: %r" % ch)
    return device_id


def check_hostname(hostname):
    if not isinstance(hostname, str) or not hostname:
        raise ValueError("hub hostname is empty")
    if len(hostname) > 253:
        raise ValueError("hub hostname is longer than 253 characters")
    for label in hostname.split("."):
        if not label or label[0] == "-" or label[-1] == "-":
            raise ValueError("hub hostname is not a DNS name: %r" % hostname)
        for ch in label:
            if not (_alnum(ch) or ch == "-"):
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


def token(resource_uri, key_b64, expiry, policy=None):
    # Pure: no clock. The token for any resource URI and absolute expiry.
    if not isinstance(resource_uri, str) or not resource_uri:
        raise ValueError("resource URI is empty")
    _check_expiry(expiry)
    if policy is not None and (not isinstance(policy, str) or not policy):
        raise ValueError("policy name is empty")
    key = _key(key_b64)
    sr = quote(resource_uri)
    sig = quote(b64encode(hmac_sha256(key, (sr + "\n" + str(expiry)).encode())))
    tok = "SharedAccessSignature sr=" + sr + "&sig=" + sig + "&se=" + str(expiry)
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
