"""SAS tokens on the host (CPython hmac): mint, parse, verify; connection strings.

The same algorithm as the device library (lib/iothub/sas.py), written independently
on CPython's hmac and urllib so each checks the other.
"""
import base64
import binascii
import hashlib
import hmac
import os
import re
import time
import urllib.parse

from upyhub.errors import UsageError

PREFIX = "SharedAccessSignature "
MAX_ID = 128
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9\-.+%_#*?!(),:=@$']{1,128}$")
REGISTRATION_ID_RE = re.compile(r"^[a-z0-9-]{1,128}$")
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")


def quote(s):
    return urllib.parse.quote(s, safe="")


def decode_key(key_b64, what="key"):
    """Strictly decode a base64 key (16..64 bytes); errors never show the key."""
    if not key_b64:
        raise UsageError("%s is empty" % what)
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("%s is not valid base64" % what) from None
    if not 16 <= len(key) <= 64:
        raise UsageError("%s must decode to 16..64 bytes (IoT Hub's rule), not %d" % (what, len(key)))
    return key


def new_key():
    """A fresh 32-byte symmetric key, base64 (what IoT Hub generates for devices and policies)."""
    return base64.b64encode(os.urandom(32)).decode()


def check_device_id(device_id):
    if not device_id:
        raise UsageError("device id is empty")
    if len(device_id) > MAX_ID:
        raise UsageError("device id is longer than %d characters" % MAX_ID)
    if not DEVICE_ID_RE.match(device_id):
        bad = next(c for c in device_id if not DEVICE_ID_RE.match(c))
        raise UsageError("device id has a character IoT Hub does not allow: %r" % bad)
    return device_id


def check_hostname(hostname):
    if not hostname:
        raise UsageError("hub hostname is empty")
    if not HOSTNAME_RE.match(hostname):
        raise UsageError("hub hostname is not a DNS name: %r" % hostname)
    return hostname


def check_registration_id(reg_id):
    if not reg_id:
        raise UsageError("registration id is empty")
    if not REGISTRATION_ID_RE.match(reg_id):
        raise UsageError("registration id must be 1..128 lowercase letters, digits or '-'")
    return reg_id


def sign(key, resource_uri, expiry):
    data = ("%s\n%d" % (quote(resource_uri), expiry)).encode()
    return base64.b64encode(hmac.new(key, data, hashlib.sha256).digest()).decode()


def mint(resource_uri, key_b64, expiry, policy=None):
    """The token for a resource URI, signed with the base64 key, valid until expiry (Unix s)."""
    if not resource_uri:
        raise UsageError("resource URI is empty")
    if isinstance(expiry, bool) or not isinstance(expiry, int) or not 0 < expiry <= 0xFFFFFFFF:
        raise UsageError("expiry must be a positive integer of Unix seconds")
    key = decode_key(key_b64)
    tok = "%ssr=%s&sig=%s&se=%d" % (PREFIX, quote(resource_uri), quote(sign(key, resource_uri, expiry)), expiry)
    if policy:
        tok += "&skn=" + quote(policy)
    return tok


def derive_device_key(group_key_b64, registration_id):
    """DPS group enrollment: base64(HMAC-SHA256(base64decode(groupKey), registrationId))."""
    check_registration_id(registration_id)
    key = decode_key(group_key_b64, "group key")
    return base64.b64encode(hmac.new(key, registration_id.encode(), hashlib.sha256).digest()).decode()


class Token:
    """A parsed SAS token: sr (decoded), sig, se, skn (or None)."""

    def __init__(self, sr, sig, se, skn=None):
        self.sr, self.sig, self.se, self.skn = sr, sig, se, skn

    def valid_signature(self, key):
        expected = sign(key, self.sr, self.se)
        return hmac.compare_digest(expected.encode(), self.sig.encode())

    def expired(self, now=None):
        return self.se <= (time.time() if now is None else now)


def parse(token):
    """Parse a SAS token; raises UsageError (never echoing the token) when malformed."""
    if not isinstance(token, str) or not token.startswith(PREFIX):
        raise UsageError("not a SharedAccessSignature token")
    fields = {}
    for part in token[len(PREFIX):].split("&"):
        name, sep, value = part.partition("=")
        if not sep or name in fields:
            raise UsageError("malformed SharedAccessSignature token")
        fields[name] = urllib.parse.unquote(value)
    if not {"sr", "sig", "se"} <= set(fields) or set(fields) - {"sr", "sig", "se", "skn"}:
        raise UsageError("SharedAccessSignature token needs sr, sig and se")
    if not fields["se"].isdigit():
        raise UsageError("SharedAccessSignature token has a non-integer se")
    return Token(fields["sr"], fields["sig"], int(fields["se"]), fields.get("skn"))


def parse_connection_string(text):
    """`HostName=...;DeviceId=...;SharedAccessKey=...` or `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`."""
    if not text:
        raise UsageError("connection string is empty")
    fields = {}
    for part in text.strip().split(";"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise UsageError("connection string is not a list of Name=value pairs separated by ';'")
        fields[name] = value
    if "HostName" not in fields:
        raise UsageError("connection string has no HostName")
    check_hostname(fields["HostName"])
    if "DeviceId" in fields:
        check_device_id(fields["DeviceId"])
    if "SharedAccessKey" in fields:
        decode_key(fields["SharedAccessKey"], "SharedAccessKey")
    return fields
