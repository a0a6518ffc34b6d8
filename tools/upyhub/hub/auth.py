"""Who may connect: IoT Hub's device authentication, and the service API's policy check.

Results carry a reason for the hub's log; reasons never contain keys or tokens.
CONNACK codes follow Azure: 4 (bad username or password) when the CONNECT is malformed for IoT Hub
(username not `{hostname}/{clientId}/?...`, password not a SAS token), 5 (not authorized) when the
credentials are well formed but do not grant this device (unknown, disabled, wrong key, expired, ...).
"""
import time

from cryptography import x509

from upyhub import sas
from upyhub.errors import UsageError
from upyhub.hub import pki

BAD_CREDENTIALS = 4
NOT_AUTHORIZED = 5


class Refused(Exception):
    def __init__(self, code, reason):
        super().__init__(reason)
        self.code, self.reason = code, reason


def _scope_ok(sr, hostname, device_id=None):
    """sr is the hub or (for devices) the device's resource URI, any case; already URL-decoded by parse."""
    sr = sr.lower().rstrip("/")
    allowed = {hostname.lower()}
    if device_id is not None:
        allowed.add(("%s/devices/%s" % (hostname, device_id)).lower())
        allowed.add(("%s/devices/%s" % (hostname, sas.quote(device_id))).lower())
    return sr in allowed


def parse_token(text):
    """A SAS token from a client; UsageError (its reason never echoes the token) when malformed.

    On top of sas.parse: `se` must be ASCII digits of sane length (str.isdigit() also takes other scripts'
    digits, which int() may refuse), so no client-chosen value reaches arithmetic as anything odd.
    """
    try:
        tok = sas.parse(text)
    except ValueError:
        raise UsageError("malformed SharedAccessSignature token") from None
    if not isinstance(tok.se, int) or tok.se >= 10 ** 12:
        raise UsageError("SharedAccessSignature token has an out-of-range se")
    return tok


def _signed_by(token, *keys_b64):
    for k in keys_b64:
        if k and token.valid_signature(sas.decode_key(k)):
            return True
    return False


def check_username(username, client_id, hostname):
    """`{hostname}/{deviceId}/?{anything}` with deviceId == client id (hostname in any case)."""
    if not username:
        raise Refused(BAD_CREDENTIALS, "no username")
    parts = username.split("/", 2)
    if len(parts) < 3 or parts[0].lower() != hostname.lower() or parts[1] != client_id:
        raise Refused(BAD_CREDENTIALS, "username is not {hostname}/{clientId}/?...")


def device(registry, hostname, client_id, username, password, peer_der, now=None, chain=()):
    """Authenticate a device CONNECT; returns (how, token expiry or None), or raises Refused."""
    if not client_id:
        raise Refused(BAD_CREDENTIALS, "empty client id")
    check_username(username, client_id, hostname)
    dev = registry.get_device(client_id)
    if dev is None:
        raise Refused(NOT_AUTHORIZED, "unknown device")
    if dev["status"] != "enabled":
        raise Refused(NOT_AUTHORIZED, "device is disabled")
    if password:
        try:
            tok = parse_token(password.decode() if isinstance(password, bytes) else password)
        except (UsageError, UnicodeDecodeError):
            raise Refused(BAD_CREDENTIALS, "password is not a SAS token") from None
        if not _scope_ok(tok.sr, hostname, client_id):
            raise Refused(NOT_AUTHORIZED, "token is for another resource")
        if tok.skn:
            policy = registry.get_policy(tok.skn)
            if policy is None:
                raise Refused(NOT_AUTHORIZED, "token names an unknown policy")
            if "DeviceConnect" not in policy["rights"]:
                raise Refused(NOT_AUTHORIZED, "policy %s has no DeviceConnect" % tok.skn)
            if not _signed_by(tok, policy["primary_key"], policy["secondary_key"]):
                raise Refused(NOT_AUTHORIZED, "bad signature (policy %s)" % tok.skn)
            how = "policy %s" % tok.skn
        else:
            if dev["auth"] != "sas":
                raise Refused(NOT_AUTHORIZED, "device has no SAS keys (%s)" % dev["auth"])
            if not _signed_by(tok, dev["primary_key"], dev["secondary_key"]):
                raise Refused(NOT_AUTHORIZED, "bad signature")
            how = "SAS"
        if tok.expired(now):
            raise Refused(NOT_AUTHORIZED, "token expired")
        return how, tok.se
    if not peer_der:
        raise Refused(NOT_AUTHORIZED, "no password and no client certificate")
    if dev["auth"] == "selfSigned":
        thumbs = {t.upper() for t in (dev["primary_thumb"], dev["secondary_thumb"]) if t}
        if not thumbs & set(pki.thumbprints(peer_der)):
            raise Refused(NOT_AUTHORIZED,
                          "client certificate thumbprint does not match (neither primary nor secondary)")
        return "X.509 thumbprint", None
    if dev["auth"] == "certificateAuthority":
        return _ca_chain(registry, client_id, peer_der, chain), None
    raise Refused(NOT_AUTHORIZED, "device uses SAS keys, not a certificate")


def _ca_chain(registry, device_id, der, chain):
    """certificateAuthority: CN = device id, and a valid chain (intermediates sent by the device) to a CA
    the hub holds (its own generations, or one registered with `hub ca --trust`), see pki.verify_chain."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise Refused(NOT_AUTHORIZED, "client certificate is not a valid X.509 certificate") from None
    if pki.common_names(cert) != [device_id]:
        raise Refused(NOT_AUTHORIZED, "client certificate CN is not the device id")
    try:
        pki.verify_chain(cert, chain, pki.PKI(registry.data_dir).issuers())
    except ValueError as e:
        raise Refused(NOT_AUTHORIZED, "client certificate does not chain to a registered CA (%s)" % e) from None
    return "X.509 CA"


# --- service side ---
class Denied(Exception):
    """A service request refused: malformed (a SharedAccessSignature that does not parse: HTTP 400) or not
    authorized (HTTP 401)."""

    def __init__(self, reason, malformed=False):
        super().__init__(reason)
        self.reason, self.malformed = reason, malformed


def service(registry, hostname, header, need, now=None):
    """Check an Authorization header against the policies; `need` is a set of permissions (any one suffices)."""
    if not header:
        raise Denied("no Authorization header")
    if not header.startswith(sas.PREFIX):
        raise Denied("Authorization is not a SAS token")
    try:
        tok = parse_token(header)
    except UsageError as e:
        raise Denied(str(e), malformed=True) from None
    if not tok.skn:
        raise Denied("token has no skn (a service call needs a shared access policy)")
    policy = registry.get_policy(tok.skn)
    if policy is None:
        raise Denied("token names an unknown policy")
    if not _scope_ok(tok.sr, hostname):
        raise Denied("token is not for this hub")
    if not _signed_by(tok, policy["primary_key"], policy["secondary_key"]):
        raise Denied("bad signature (policy %s)" % tok.skn)
    if tok.expired(now if now is not None else time.time()):
        raise Denied("token expired")
    if not set(need) & set(policy["rights"]):
        raise Denied("policy %s lacks %s" % (tok.skn, " or ".join(sorted(need))))
    return policy["name"]
