"""Audit a board over mpremote: what an attacker or a bad factory step would leave on it.

The board runs one inspection (`INSPECT`) and answers with facts, never with its secrets: key
names, whether the device key decodes to a plausible key, which rules each file breaks, the public
root certificates, file hashes, what it scanned and its clock. Every file is scanned whole, in
chunks, text or binary (a .mpy keeps its strings verbatim), lowercased and without spaces, quotes,
'+' and backslashes, so case, spacing and split string literals hide nothing. The host turns the
facts into findings (RULES lists them):
  critical  no device key; secrets.json holding anything but device_key/wifi_password; a hub
            connection string or policy token in any file; WebREPL configured or started anywhere;
            the device key or Wi-Fi password in any file but secrets.json; roots missing, expired or
            expiring within the warning window; CERT_NONE/CERT_OPTIONAL anywhere, or verify_mode set
            to anything but CERT_REQUIRED; firmware that does not match this checkout's build (--board;
            with the package frozen in: boot.py and main.py, and no module at the flash's root that would run
            instead of a frozen one)
  warning   the board's clock is not set; a file that could not be read
`audit(port)` returns a Result (findings, what was checked); the CLI exits 1 when one is critical.
"""
import datetime
import hashlib
import json

from upyhub import build, certs, mpr

INSPECT = mpr.WALK + mpr.FROZEN + r"""
import json, time, re
def _rd(p, n=131072):
    try:
        with open(p, 'rb') as f:
            return f.read(n)
    except OSError:
        return None
_all = []
_walk('/', _all)
_all = [p for p in _all if not p.endswith('/')]
A = {'files': {}, 'hits': {}, 'checked': {'files': 0, 'bytes': 0}}
for p in _all:
    A['files'][p] = _h(p)
_raw = _rd('/config.json')
try:
    _cfg = json.loads(_raw) if _raw else None
except ValueError:
    _cfg = 'bad'
A['config'] = _cfg
_sec = _rd('/secrets.json')
_key = _pw = None
if _sec is None:
    A['secrets'] = None
else:
    try:
        _s = json.loads(_sec)
        _key, _pw = _s.get('device_key'), _s.get('wifi_password')
        A['secrets'] = {'names': sorted(_s)}
        try:
            A['secrets']['key_bytes'] = len(binascii.a2b_base64(_key)) if isinstance(_key, str) else 0
        except Exception:
            A['secrets']['key_bytes'] = -1
    except Exception:
        A['secrets'] = 'bad'
# Every file, whole, in chunks (text or binary: a .mpy keeps its strings as they are). Secrets are looked for
# as they are; the rules look at the text lowercased, without spaces, quotes, '+' and backslashes, so case,
# spacing and literals split with "a" "b" or "a" + "b" do not hide anything.
_SECRETS = [('secret-in-code', x.encode()) for x in (_key, _pw) if isinstance(x, str) and len(x) >= 4]
_RULES = [('hub-credential', re.compile(b'sharedaccesskey(name)?=')),
          ('hub-credential', re.compile(b'&se=[0-9]+&skn=')),
          ('cert-none', re.compile(b'cert_none|cert_optional')),
          ('webrepl', re.compile(b'webrepl'))]
_VM = re.compile(b'verify_mode[=:]([a-z0-9_.]+)')
_DROP = b' \t\r\n"\'+\\'
_OV = 256
def _norm(b):
    return bytes(c for c in b.lower() if c not in _DROP)
def _scan(p):
    hits = []
    craw = cnorm = b''
    vm = cr = False
    with open(p, 'rb') as f:
        while True:
            b = f.read(1024)
            if not b:
                break
            A['checked']['bytes'] += len(b)
            raw = craw + b
            for name, x in _SECRETS:
                if x in raw and name not in hits:
                    hits.append(name)
            craw = raw[-_OV:]
            t = cnorm + _norm(b)
            for name, rx in _RULES:
                if name not in hits and rx.search(t):
                    hits.append(name)
            m = _VM.search(t)
            if m and not (m.group(1).endswith(b'cert_required') or m.group(1) == b'2'):
                hits.append('verify-mode')
            vm = vm or b'verify_mode' in t
            cr = cr or b'cert_required' in t
            cnorm = t[-_OV:]
    if vm and not cr and 'verify-mode' not in hits:
        hits.append('verify-mode')
    return hits
for p in _all:
    try:
        if p == '/secrets.json':
            _t = _norm(_sec or b'')
            h = [n for n, rx in _RULES[:2] if rx.search(_t)]
            A['checked']['bytes'] += len(_sec or b'')
        else:
            h = _scan(p)
    except OSError:
        h = ['unreadable']
    A['checked']['files'] += 1
    if h:
        A['hits'][p] = h
A['webrepl_cfg'] = _rd('/webrepl_cfg.py') is not None
_cd = _cfg.get('certs_dir', 'certs') if isinstance(_cfg, dict) else 'certs'
_roots = _rd('/' + str(_cd).strip('/') + '/active/roots.pem')
A['roots'] = _roots.decode() if _roots and _roots[:1] != b'0' else (binascii.b2a_base64(_roots).decode() if _roots else None)
A['roots_der'] = bool(_roots) and _roots[:1] == b'0'
A['frozen'] = _frozen()
A['year'] = time.gmtime()[0]
A['now'] = time.time()
print('UPYHUB-AUDIT ' + json.dumps(A))
"""

# What the audit checks, in the order the report lists them.
RULES = (
    ("no-config", "config.json present and valid"),
    ("no-key", "a device key in secrets.json (SAS devices)"),
    ("non-device-secret", "secrets.json holds only device_key and wifi_password"),
    ("hub-credential", "no hub connection string or policy token in any file (any case, spacing, split literals)"),
    ("secret-in-code", "the device key and Wi-Fi password in no file but secrets.json"),
    ("webrepl", "WebREPL not configured or started anywhere"),
    ("cert-none", "no CERT_NONE/CERT_OPTIONAL in the configuration or any file"),
    ("verify-mode", "verify_mode never set to anything but CERT_REQUIRED"),
    ("roots", "root certificates present, valid and not expiring within roots_expiry_warn_days"),
    ("clock-unset", "the board's clock is set"),
    ("firmware-mismatch", "the firmware matches this checkout's build (with --board)"),
)


class Finding:
    def __init__(self, severity, code, message):
        self.severity, self.code, self.message = severity, code, message

    def as_dict(self):
        return {"severity": self.severity, "code": self.code, "message": self.message}


class Result:
    """findings: the Finding list; checked: {"files": n, "bytes": n} the board scanned."""

    def __init__(self, found, checked):
        self.findings, self.checked = found, checked

    @property
    def critical(self):
        return any(f.severity == "critical" for f in self.findings)


def audit(port, board=None, timeout=120, now=None):
    facts = mpr.Board(port, timeout).tagged(INSPECT, "UPYHUB-AUDIT")
    return Result(findings(facts, board=board, now=now), facts.get("checked") or {"files": 0, "bytes": 0})


def findings(facts, board=None, now=None):
    out = []

    def crit(code, msg):
        out.append(Finding("critical", code, msg))

    def warn(code, msg):
        out.append(Finding("warning", code, msg))

    cfg = facts.get("config")
    sec = facts.get("secrets")
    auth = cfg.get("auth", "sas") if isinstance(cfg, dict) else "sas"
    if cfg is None:
        crit("no-config", "config.json is missing")
    elif cfg == "bad":
        crit("bad-config", "config.json is not valid JSON")
    if sec is None:
        if auth == "sas":
            crit("no-key", "no secrets.json: the board has no device key")
    elif sec == "bad":
        crit("bad-secrets", "secrets.json is not valid JSON")
    else:
        extra = [n for n in sec["names"] if n not in ("device_key", "wifi_password")]
        if extra:
            crit("non-device-secret", "secrets.json holds %s besides the device key (only device_key and "
                                      "wifi_password belong on a board)" % ", ".join(repr(n) for n in extra))
        if auth == "sas" and "device_key" not in sec["names"]:
            crit("no-key", "secrets.json has no device_key")
        elif "device_key" in sec["names"] and not 16 <= sec.get("key_bytes", 0) <= 64:
            crit("bad-key", "the device_key is not a base64 key of 16..64 bytes")
    hits = facts.get("hits", {})
    by_rule = {}
    for path in sorted(hits):
        for rule in hits[path]:
            by_rule.setdefault(rule, []).append(path)
    for p in by_rule.get("hub-credential", []):
        crit("hub-credential", "%s holds a hub connection string or policy token: a board needs only its own key" % p)
    for p in by_rule.get("secret-in-code", []):
        crit("secret-in-code", "%s contains the device key or Wi-Fi password in clear" % p)
    webrepl = (["/webrepl_cfg.py"] if facts.get("webrepl_cfg") else []) + \
        [p for p in by_rule.get("webrepl", []) if p != "/webrepl_cfg.py"]
    if webrepl:
        crit("webrepl", "WebREPL is configured or started (%s): a network shell" % ", ".join(webrepl))
    if by_rule.get("cert-none"):
        crit("cert-none", "CERT_NONE or CERT_OPTIONAL appears in %s: TLS without certificate checks"
             % ", ".join(by_rule["cert-none"]))
    if by_rule.get("verify-mode"):
        crit("verify-mode", "verify_mode is set to something other than CERT_REQUIRED in %s"
             % ", ".join(by_rule["verify-mode"]))
    for p in by_rule.get("unreadable", []):
        warn("unreadable", "%s could not be read" % p)
    if isinstance(cfg, dict) and any(str(v).upper() in ("CERT_NONE", "CERT_OPTIONAL") for v in _values(cfg)):
        if "/config.json" not in by_rule.get("cert-none", []):
            crit("cert-none", "the configuration asks for CERT_NONE")
    out.extend(_roots_findings(facts, cfg, now))
    if facts.get("year", 0) < 2024:
        warn("clock-unset", "the board's clock is not set (year %s): tokens need NTP time" % facts.get("year"))
    if board:
        out.extend(_firmware_findings(facts, board))
    return out


def _values(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _values(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values(v)
    else:
        yield obj


def _roots_findings(facts, cfg, now):
    roots = facts.get("roots")
    if not roots:
        return [Finding("critical", "roots-missing", "no root certificates (certs/active/roots.pem): TLS cannot "
                                                     "verify the hub")]
    import base64

    data = base64.b64decode(roots) if facts.get("roots_der") else roots.encode()
    try:
        loaded = certs.load(data, "the board's roots")
    except Exception:
        return [Finding("critical", "roots-bad", "certs/active/roots.pem is not a certificate bundle")]
    warn_days = cfg.get("roots_expiry_warn_days", 30) if isinstance(cfg, dict) else 30
    now = now or datetime.datetime.now(datetime.timezone.utc)
    out = []
    for c in loaded:
        left = (c.not_valid_after_utc - now).total_seconds() / 86400
        name = c.subject.rfc4514_string()
        if left <= 0:
            out.append(Finding("critical", "roots-expired", "root %s expired on %s" % (name, c.not_valid_after_utc.date())))
        elif left <= warn_days:
            out.append(Finding("critical", "roots-expiring", "root %s expires in %d days (%s)"
                               % (name, int(left), c.not_valid_after_utc.date())))
    return out


# Names that, as files at the flash's root (the first entry of a board's sys.path, ''), would run instead of the
# frozen firmware's own modules.
FROZEN_NAMES = ("iothub", "umqtt", "board")


def _firmware_findings(facts, board):
    import pathlib
    import tempfile

    frozen = facts.get("frozen") is True
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = pathlib.Path(tmp) / "tree"
        build.build(board, out_dir, quiet=True)
        if frozen:  # the package is in the firmware: the flash holds boot.py and main.py
            out_dir = build.frozen_tree(pathlib.Path(tmp) / "frozen")
        want = {"/" + p.relative_to(out_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in out_dir.rglob("*") if p.is_file()}
    have = facts.get("files", {})
    differ = sorted(p for p, h in want.items() if have.get(p) != h)
    extra = sorted(p for p in have if p.startswith("/lib/") and p not in want and not frozen)
    out = []
    if differ or extra:
        what = differ[:3] + extra[:3]
        out.append(Finding("critical", "firmware-mismatch", "the firmware does not match this checkout's %s build: %s"
                           % (board, ", ".join(what) + (" ..." if len(differ) + len(extra) > len(what) else ""))))
    if frozen:
        shadows = sorted(p for p in have if p.lstrip("/").split("/")[0].rsplit(".", 1)[0] in FROZEN_NAMES
                         and (p.count("/") > 1 or p.endswith((".py", ".mpy"))))
        if shadows:
            out.append(Finding("critical", "firmware-mismatch", "%s on the flash would run instead of the firmware's "
                               "frozen modules (the flash's root comes first on sys.path)" % ", ".join(shadows[:3])))
    return out


def report(found, checked=None, port=None):
    lines = []
    if checked is not None:
        lines.append("checked %d files (%d bytes) on %s against %d rules:" % (checked["files"], checked["bytes"],
                                                                            port or "the board", len(RULES)))
        lines.extend("  %-18s %s" % rule for rule in RULES)
    for f in sorted(found, key=lambda f: (f.severity != "critical", f.code)):
        lines.append("%-8s  %-18s %s" % (f.severity.upper(), f.code, f.message))
    crit = sum(1 for f in found if f.severity == "critical")
    lines.append("%d critical, %d warning" % (crit, len(found) - crit) if found else "no findings")
    return "\n".join(lines)


def as_json(found, checked=None):
    doc = {"findings": [f.as_dict() for f in found]}
    if checked is not None:
        doc["checked"] = dict(checked, rules=[code for code, _ in RULES])
    return json.dumps(doc, indent=1)
