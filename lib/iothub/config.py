# config.json + secrets.json from flash, checked field by field. The firmware never starts
# half-configured: every problem found is listed (one line each), none of them echoes a secret.
# DEFAULTS is the one place every setting's default lives: the session and the app read the
# checked config and never supply their own.
import json
from iothub import sas
from iothub.crypto import b64decode

SECRET_KEYS = ("device_key", "wifi_password", "token_secret")
ASSIGNMENT = "dps.json"  # where the hub and device id DPS assigned are kept (iothub.dps writes it)
DPS_ENDPOINT = "global.azure-devices-provisioning.net"
DEFAULTS = {
    "port": 8883,
    "auth": "sas",
    "token_ttl": 3600,  # s a token is valid; renewed by a clean reconnect before it ends
    "keepalive": 60,  # s; the hub drops a silent device after 1.5 x this
    "telemetry_interval": 10,  # s between readings (the sample app; the twin may change it ...)
    "telemetry_interval_min": 1,  # ... within these bounds: the cloud cannot make a device flood
    "telemetry_interval_max": 86400,
    "certs_dir": "certs",
    "roots_expiry_warn_days": 30,
    "ntp": ["pool.ntp.org"],
    "gateway": None,
    "retry_cap": 60,  # s: longest wait between reconnect attempts
    "refused_retry": 300,  # s to wait after the hub refused the credentials (CONNACK 4/5)
    "stable_after": 60,  # s a connection must stay up before the backoff starts again from 1 s
    "memory_resets_after": 5,  # connect attempts failing for lack of memory in a row before a clean reset
    "outbox": "flash",  # telemetry kept until acknowledged: "flash" (survives resets) or "ram"
    "outbox_dir": "outbox",
    "outbox_kb": 64,  # at most this much of it (a 1 MB filesystem keeps room for the rest)
    "outbox_full": "drop-oldest",  # when full: "drop-oldest" (counted) or "refuse" (send() raises)
    "inflight": 8,  # QoS 1 messages published before their PUBACKs
    "io_timeout": 20,  # s: TLS handshake, CONNECT/CONNACK, a packet stalled mid-way, a hub not reading
}
# Files are sized before they are read: a huge file is a config problem, not a MemoryError.
MAX_CONFIG = 8192
MAX_SECRETS = 2048


class ConfigError(Exception):
    # .problems: one message per bad field.
    def __init__(self, problems):
        super().__init__("; ".join(problems))
        self.problems = problems


def _read(path, what, problems, limit):
    import os

    try:
        size = os.stat(path)[6]
    except OSError:
        problems.append("%s: missing (%s)" % (what, path))
        return None
    if size > limit:
        problems.append("%s: %d bytes, more than the %d this firmware reads" % (what, size, limit))
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        from iothub.transport import why

        problems.append("%s: cannot be read (%s)" % (what, why(e)))
        return None
    except MemoryError:
        problems.append("%s: not enough memory to read it" % what)
        return None
    except ValueError:  # UnicodeError too
        problems.append("%s: not valid JSON" % what)
        return None
    if not isinstance(data, dict):
        problems.append("%s: must hold a JSON object" % what)
        return None
    return data


def _int(cfg, name, lo, hi, problems):
    v = cfg.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        problems.append("config.json: %s must be an integer from %d to %d" % (name, lo, hi))


def _str(v):
    return isinstance(v, str) and len(v) > 0


def _num(v):
    return not isinstance(v, bool) and isinstance(v, (int, float))


def check(cfg, secrets):
    # Returns (cfg with defaults filled in, secrets); raises ConfigError listing every problem.
    problems = []
    full = dict(DEFAULTS)
    full.update(cfg)
    cfg = full
    dps = cfg.get("dps")
    for name, fn in (("hostname", sas.check_hostname), ("device_id", sas.check_device_id)):
        if dps is not None and cfg.get(name) is None:
            continue  # DPS assigns them at the first boot
        try:
            fn(cfg.get(name))
        except ValueError as e:
            problems.append("config.json: %s: %s" % (name, e))
    if dps is not None:
        cfg.setdefault("hostname", None)
        cfg.setdefault("device_id", None)
        _dps(cfg, dps, problems)
    gw = cfg.get("gateway")
    if gw is not None and not _str(gw):
        problems.append("config.json: gateway must be a host name or address (or absent)")
    _int(cfg, "port", 1, 65535, problems)
    # Tokens shorter than 10 s would be renewed faster than a TLS handshake on a board.
    _int(cfg, "token_ttl", 10, 365 * 86400, problems)
    # The hub caps keep-alive at 1177 s; below 5 s a board would do little but ping.
    _int(cfg, "keepalive", 5, 1177, problems)
    _int(cfg, "roots_expiry_warn_days", 0, 36500, problems)
    _int(cfg, "retry_cap", 2, 3600, problems)
    _int(cfg, "refused_retry", 1, 86400, problems)
    _int(cfg, "stable_after", 1, 3600, problems)
    _int(cfg, "memory_resets_after", 1, 1000, problems)
    _int(cfg, "outbox_kb", 1, 16384, problems)
    _int(cfg, "inflight", 1, 32, problems)
    if cfg.get("outbox") not in ("flash", "ram"):
        problems.append("config.json: outbox must be \"flash\" or \"ram\"")
    if cfg.get("outbox_full") not in ("drop-oldest", "refuse"):
        problems.append("config.json: outbox_full must be \"drop-oldest\" or \"refuse\"")
    if not _str(cfg.get("outbox_dir")) or "/" in cfg["outbox_dir"] or cfg["outbox_dir"] in (".", ".."):
        problems.append("config.json: outbox_dir must be a folder name")
    _int(cfg, "io_timeout", 1, 120, problems)
    lo, hi = cfg.get("telemetry_interval_min"), cfg.get("telemetry_interval_max")
    if not _num(lo) or not _num(hi) or not 0 < lo <= hi <= 86400 * 7:
        problems.append("config.json: telemetry_interval_min and _max must be numbers of seconds, 0 < min <= max <= 604800")
    elif not _num(cfg.get("telemetry_interval")) or not lo <= cfg["telemetry_interval"] <= hi:
        problems.append("config.json: telemetry_interval must be a number of seconds from %s to %s" % (lo, hi))
    if not _str(cfg.get("certs_dir")):
        problems.append("config.json: certs_dir must be a folder name")
    ntp = cfg.get("ntp")
    if not isinstance(ntp, list) or not ntp or not all(_str(s) for s in ntp):
        problems.append("config.json: ntp must be a list of server names")
    wifi = cfg.get("wifi")
    if wifi is not None and (not isinstance(wifi, dict) or not _str(wifi.get("ssid"))):
        problems.append("config.json: wifi must be an object with an ssid (or absent on wired/unix)")
    auth = cfg.get("auth")
    if auth not in ("sas", "x509", "token-service"):
        problems.append("config.json: auth must be \"sas\", \"x509\" or \"token-service\"")
    if auth == "token-service":
        ts = cfg.get("token_service")
        if not isinstance(ts, dict) or not _str(ts.get("host")) or not isinstance(ts.get("port", 443), int):
            problems.append("config.json: token_service must name the service's host (and port; auth is token-service)")
        elif dps is not None:
            problems.append("config.json: dps needs the device's own key or certificate (not auth token-service)")
    if auth == "x509":
        x = cfg.get("x509")
        if not isinstance(x, dict) or not _str(x.get("cert")) or not _str(x.get("key")):
            problems.append("config.json: x509 must name the device's cert and key files (auth is x509)")
    if secrets is not None:
        for k in secrets:
            if k not in SECRET_KEYS:
                # Never print the value: it may be a policy key put there by mistake.
                problems.append("secrets.json: unexpected entry %r (only device_key, token_secret and wifi_password "
                                "belong here)" % k)
        if auth == "token-service":
            _key(secrets, "token_secret", problems)
        if auth == "sas":
            key = secrets.get("device_key")
            if not _str(key):
                problems.append("secrets.json: device_key is missing (auth is sas)")
            else:
                try:
                    n = len(b64decode(key, "device_key"))
                    if not 16 <= n <= 64:
                        problems.append("secrets.json: device_key must decode to 16..64 bytes")
                except ValueError as e:
                    problems.append("secrets.json: %s" % e)
        pw = secrets.get("wifi_password")
        if pw is not None and not isinstance(pw, str):
            problems.append("secrets.json: wifi_password must be a string")
    if problems:
        raise ConfigError(problems)
    return cfg, secrets


def _key(secrets, name, problems):
    key = secrets.get(name)
    if not _str(key):
        problems.append("secrets.json: %s is missing" % name)
        return
    try:
        if not 16 <= len(b64decode(key, name)) <= 64:
            problems.append("secrets.json: %s must decode to 16..64 bytes" % name)
    except ValueError as e:
        problems.append("secrets.json: %s" % e)


def _dps(cfg, dps, problems):
    if not isinstance(dps, dict):
        problems.append("config.json: dps must be an object with id_scope and registration_id")
        return
    if not _str(dps.get("id_scope")) or len(dps["id_scope"]) > 64:
        problems.append("config.json: dps.id_scope must be the DPS ID scope (e.g. 0ne00000001)")
    try:
        sas.check_registration_id(dps.get("registration_id"))
    except ValueError as e:
        problems.append("config.json: dps.registration_id: %s" % e)
    dps.setdefault("endpoint", DPS_ENDPOINT)
    dps.setdefault("port", 8883)
    try:
        sas.check_hostname(dps["endpoint"])
    except ValueError as e:
        problems.append("config.json: dps.endpoint: %s" % e)
    if isinstance(dps["port"], bool) or not isinstance(dps["port"], int) or not 0 < dps["port"] < 65536:
        problems.append("config.json: dps.port must be a port number")
    if dps.get("gateway") is not None and not _str(dps["gateway"]):
        problems.append("config.json: dps.gateway must be a host name or address (or absent)")


def assignment(root, dps):
    # (hub, device id) DPS assigned to this registration, from flash; None when there is none or
    # it is torn, altered or for another registration (the device then registers again).
    import binascii
    import hashlib
    import os

    path = root + "/" + ASSIGNMENT
    try:
        if os.stat(path)[6] > 1024:
            return None
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        if len(lines) != 3 or binascii.hexlify(hashlib.sha256(lines[0]).digest()) != lines[1]:
            return None
        a = json.loads(lines[0])
        if a.get("id_scope") != dps.get("id_scope") or a.get("registration_id") != dps.get("registration_id"):
            return None
        sas.check_hostname(a.get("hub"))
        sas.check_device_id(a.get("device_id"))
        return a["hub"], a["device_id"]
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def load(root):
    # root: the flash root ("/" on boards). Secrets are optional only for x509 devices.
    root = root.rstrip("/")
    problems = []
    cfg = _read(root + "/config.json", "config.json", problems, MAX_CONFIG)
    secrets = None
    try:
        open(root + "/secrets.json").close()
        secrets = _read(root + "/secrets.json", "secrets.json", problems, MAX_SECRETS)
    except OSError:
        if cfg is not None and cfg.get("auth", "sas") in ("sas", "token-service"):
            problems.append("secrets.json: missing (%s/secrets.json), the device key lives there" % root)
    if problems:
        raise ConfigError(problems)
    if isinstance(cfg.get("dps"), dict):
        a = assignment(root, cfg["dps"])
        if a is not None:
            cfg["hostname"], cfg["device_id"] = a
    cfg, secrets = check(cfg, secrets if secrets is not None else {})
    return cfg, secrets


