"""Audit a board over mpremote: what an attacker or a bad factory step would leave on it.

The board runs one inspection (`INSPECT`) and answers with facts, never with its secrets: key
names, whether the device key decodes to a plausible key, which files quote it, the public root
certificates, file hashes and its clock. The host turns the facts into findings:
  critical  no device key; secrets.json holding anything but device_key/wifi_password, or a hub
            connection string / policy token anywhere on the flash; WebREPL enabled; the device key
            or Wi-Fi password written into boot.py/main.py; roots missing, expired or expiring
            within the warning window; CERT_NONE in the configuration or the firmware sources;
            firmware that does not match this checkout's build (when --board is given)
  warning   the board's clock is not set
`audit(port)` returns the findings; the CLI exits 1 when one is critical.
"""
import datetime
import hashlib
import json

from upyhub import build, certs, mpr

INSPECT = mpr.WALK + r"""
import json, time
def _rd(p, n=131072):
    try:
        with open(p, 'rb') as f:
            return f.read(n)
    except OSError:
        return None
_all = []
_walk('/', _all)
_all = [p for p in _all if not p.endswith('/')]
A = {'files': {}, 'quoting': [], 'conn_strings': [], 'cert_none': []}
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
for p in _all:
    if p == '/secrets.json' or not (p.endswith('.py') or p.endswith('.json') or p.endswith('.txt') or p.endswith('.cfg')):
        continue
    t = _rd(p)
    if t is None:
        continue
    if (_key and _key.encode() in t) or (_pw and len(_pw) >= 4 and _pw.encode() in t):
        A['quoting'].append(p)
    if b'SharedAccessKeyName=' in t or b'skn=' in t:
        A['conn_strings'].append(p)
    if b'CERT_NONE' in t:
        A['cert_none'].append(p)
if _sec is not None and (b'SharedAccessKeyName=' in _sec or b'skn=' in _sec):
    A['conn_strings'].append('/secrets.json')
_boot = (_rd('/boot.py') or b'') + (_rd('/main.py') or b'')
A['webrepl'] = _rd('/webrepl_cfg.py') is not None or b'webrepl' in _boot
_cd = _cfg.get('certs_dir', 'certs') if isinstance(_cfg, dict) else 'certs'
_roots = _rd('/' + str(_cd).strip('/') + '/active/roots.pem')
A['roots'] = _roots.decode() if _roots and _roots[:1] != b'0' else (binascii.b2a_base64(_roots).decode() if _roots else None)
A['roots_der'] = bool(_roots) and _roots[:1] == b'0'
A['year'] = time.gmtime()[0]
A['now'] = time.time()
print('UPYHUB-AUDIT ' + json.dumps(A))
"""


class Finding:
    def __init__(self, severity, code, message):
        self.severity, self.code, self.message = severity, code, message

    def as_dict(self):
        return {"severity": self.severity, "code": self.code, "message": self.message}


def audit(port, board=None, timeout=120, now=None):
    facts = mpr.Board(port, timeout).tagged(INSPECT, "UPYHUB-AUDIT")
    return findings(facts, board=board, now=now)


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
    for p in facts.get("conn_strings", []):
        crit("hub-credential", "%s holds a hub connection string or policy token: a board needs only its own key" % p)
    for p in facts.get("quoting", []):
        crit("secret-in-code", "%s contains the device key or Wi-Fi password in clear" % p)
    if facts.get("webrepl"):
        crit("webrepl", "WebREPL is enabled (webrepl_cfg.py or webrepl in boot.py/main.py): a network shell")
    if facts.get("cert_none"):
        crit("cert-none", "CERT_NONE appears in %s: TLS without certificate checks" % ", ".join(facts["cert_none"]))
    if isinstance(cfg, dict) and any(str(v).upper() == "CERT_NONE" for v in _values(cfg)):
        if "/config.json" not in facts.get("cert_none", []):
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


def _firmware_findings(facts, board):
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = pathlib.Path(tmp) / "tree"
        build.build(board, out_dir, quiet=True)
        want = {"/" + p.relative_to(out_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in out_dir.rglob("*") if p.is_file()}
    have = facts.get("files", {})
    differ = sorted(p for p, h in want.items() if have.get(p) != h)
    extra = sorted(p for p in have if p.startswith("/lib/") and p not in want)
    if differ or extra:
        what = differ[:3] + extra[:3]
        return [Finding("critical", "firmware-mismatch", "the firmware does not match this checkout's %s build: %s"
                        % (board, ", ".join(what) + (" ..." if len(differ) + len(extra) > len(what) else "")))]
    return []


def report(found):
    lines = []
    for f in sorted(found, key=lambda f: (f.severity != "critical", f.code)):
        lines.append("%-8s  %-18s %s" % (f.severity.upper(), f.code, f.message))
    crit = sum(1 for f in found if f.severity == "critical")
    lines.append("%d critical, %d warning" % (crit, len(found) - crit) if found else "no findings")
    return "\n".join(lines)


def as_json(found):
    return json.dumps([f.as_dict() for f in found], indent=1)
