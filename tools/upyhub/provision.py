"""Provision one board: hub identity, per-device key, configuration, roots and firmware, checked.

`provision(opts)` for a board on a serial port (or the simulated board), in this order:
  1. read the board (one mpremote session: every file's SHA-256, free space, the device key's
     SHA-256 - the key itself is read back only when it must be registered on the hub);
  2. choose the key: the one already on the board for this device id, else the one the hub
     already has when it is derived from the group key, else 32 fresh random bytes (or the
     derived key); refuse a device id the hub knows with other credentials;
  3. write what differs: the root store first (a fresh board gets certs/active through the
     device's own certstore writer, run here), then secrets.json and config.json (through a
     temporary name and a rename), then register the key on the hub, then lib/ and boot.py/main.py;
  4. on the board, mint a SAS token with the flashed key and connect to the hub with it
     (MQTT CONNECT over TLS, the hub's answer is the check);
  5. reset the board (mpremote's session interrupted its firmware), unless asked not to.
Every step compares before it writes, so a re-run changes nothing on a provisioned board and
an interrupted run converges when run again. `--rotate-key` rolls the key with the hub holding
old and new (primary/secondary) until the board has proven the new one.
Nothing that is not the device's own key goes to the board: the policy key, the group key and
the connection string are refused in every file written.
"""
import base64
import hashlib
import json
import pathlib
import re
import socket
import ssl
import struct
import tempfile
import time

from upyhub import build, certs, mpr, paths, sas
from upyhub.errors import UpyhubError, UsageError, network_reason
from upyhub.hub.client import ServiceClient, ServiceError

SECRETS = "secrets.json"
CONFIG = "config.json"


class Options:
    """What `upyhub provision` was asked (secrets come from files or the environment, never argv)."""

    def __init__(self, port, device_id, hub_cs, board="esp32", hub_ca=None, gateway=None, https_port=443,
                 mqtt_port=8883, roots=None, wifi_ssid=None, wifi_password=None, group_key=None, rotate=False,
                 reset=True, timeout=120, ntp=("pool.ntp.org",), telemetry_interval=10, force=False, remove_old=False,
                 device_gateway=None):
        self.port, self.device_id, self.hub_cs, self.board = port, device_id, hub_cs, board
        self.force, self.remove_old = force or remove_old, remove_old
        self.hub_ca, self.gateway, self.https_port, self.mqtt_port = hub_ca, gateway, https_port, mqtt_port
        self.roots, self.wifi_ssid, self.wifi_password = roots, wifi_ssid, wifi_password
        self.group_key, self.rotate, self.reset, self.timeout = group_key, rotate, reset, timeout
        self.ntp, self.telemetry_interval = list(ntp), telemetry_interval
        # where the board itself reaches the hub, when not where this host does (a board behind a modem)
        self.device_gateway = device_gateway


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _key_sha(key):
    return _sha(key.encode())


def device_tree(board, frozen=False):
    """{flash path: bytes} of the firmware files for `board` (built fresh, checked). frozen: the board's firmware
    has the device package frozen in, so its flash holds only boot.py and main.py (build.frozen_tree)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "tree"
        build.build(board, out, quiet=True)
        if frozen:
            out = build.frozen_tree(pathlib.Path(tmp) / "frozen")
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def fresh_cert_store(roots, certs_dir="certs"):
    """{flash path: bytes} of a new root store holding `roots` as its active set (the device's writer)."""
    with tempfile.TemporaryDirectory() as tmp:
        flash = pathlib.Path(tmp)
        (flash / CONFIG).write_text(json.dumps({"certs_dir": certs_dir}))
        certs.install_local(flash, roots, source="provision")
        base = flash / certs_dir
        return {(pathlib.Path(certs_dir) / p.relative_to(base)).as_posix(): p.read_bytes()
                for p in sorted(base.rglob("*")) if p.is_file()}


def make_config(opts, hostname):
    cfg = {"hostname": hostname, "device_id": opts.device_id, "port": opts.mqtt_port, "auth": "sas",
           "certs_dir": "certs", "ntp": opts.ntp, "telemetry_interval": opts.telemetry_interval}
    if opts.device_gateway or opts.gateway:
        cfg["gateway"] = opts.device_gateway or opts.gateway
    if opts.wifi_ssid:
        cfg["wifi"] = {"ssid": opts.wifi_ssid}
    return cfg


def _checked(cfg, secrets):
    """The device's own config checker, run here: a board never gets a config it would refuse."""
    config = paths.device_module("config")
    try:
        config.check(dict(cfg), dict(secrets))
    except config.ConfigError as exc:
        raise UsageError("refused before writing: %s" % exc)


# A connection string's fields, in any case and with any spacing around "=" (what a parser would accept).
_CS_FIELD = re.compile(r"(?i)\b(hostname|sharedaccesskeyname|sharedaccesskey|deviceid|moduleid|gatewayhostname)\s*=")
_POLICY_TOKEN = re.compile(r"(?i)sharedaccesssignature\b.*\bskn\s*=")


def _strings(data):
    """The text of a file to check, and every string inside it when it is JSON (escapes decoded)."""
    text = data.decode("latin-1")
    out = [text]
    try:
        stack = [json.loads(data)]
    except ValueError:
        return out
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            out.append(v)
    return out


def looks_like_hub_credential(text):
    """True for text that parses as a connection string (any case, spaces around "=") or a policy token."""
    fields = {m.group(1).lower() for m in _CS_FIELD.finditer(text)}
    return bool(fields & {"sharedaccesskey", "sharedaccesskeyname"}) or len(fields) >= 2 or \
        bool(_POLICY_TOKEN.search(text))


def guard(files, forbidden, credentials=True):
    """Refuse to write a hub connection string, a policy token, a policy key or a group key onto a board, in any
    file and any field (case-insensitive, whitespace-tolerant, JSON escapes decoded). credentials=False: only the
    keys (for the firmware built from this checkout, whose source mentions the token format)."""
    secrets = [re.sub(r"\s", "", f) for f in forbidden if f and f.strip()]
    for path, data in files.items():
        for text in _strings(data):
            if credentials and looks_like_hub_credential(text):
                raise UsageError("refused: %s would hold a hub connection string or policy token; only the device "
                                 "key goes to a board" % path)
            flat = re.sub(r"\s", "", text)
            if any(secret in flat for secret in secrets):
                raise UsageError("refused: %s would hold a policy or group key; only the device key goes to a board"
                                 % path)


class _Hub:
    def __init__(self, opts):
        try:
            self.cs = sas.parse_connection_string(opts.hub_cs)
        except UsageError as exc:
            raise UsageError("hub connection string: %s" % exc)
        if "SharedAccessKeyName" not in self.cs:
            raise UsageError("the hub connection string must be a policy's (SharedAccessKeyName=...), "
                             "with RegistryReadWrite; a device connection string cannot register devices")
        self.hostname = self.cs["HostName"]
        self.policy_key = self.cs["SharedAccessKey"]
        self.svc = ServiceClient(opts.hub_cs, opts.hub_ca or _default_ca(), host=opts.gateway, port=opts.https_port,
                                 timeout=opts.timeout)

    def call(self, what, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except ServiceError as exc:
            if exc.status == 401:
                raise UpyhubError("the hub refused the policy credentials while trying to %s (HTTP 401): a wrong "
                                 "key, or a policy without RegistryReadWrite" % what)
            if exc.status == 403:
                raise UpyhubError("the policy may not %s (HTTP 403): it needs RegistryReadWrite" % what)
            raise UpyhubError("the hub answered HTTP %d while trying to %s: %s" % (exc.status, what, exc.message[:200]))
        except (OSError, ssl.SSLError) as exc:
            raise UpyhubError("cannot reach the hub's service API to %s: %s" % (what, network_reason(exc)))

    def get(self, device_id):
        try:
            return self.svc.get_device(device_id)
        except ServiceError as exc:
            if exc.status == 404:
                return None
            return self.call("read the device identity", self.svc.get_device, device_id)
        except (OSError, ssl.SSLError) as exc:
            raise UpyhubError("cannot reach the hub's service API at %s:%d: %s"
                              % (self.svc.host, self.svc.port, network_reason(exc)))

    def put(self, device_id, primary, secondary, etag=None):
        return self.call("register the device key", self.svc.put_device, device_id, primary_key=primary,
                         secondary_key=secondary, etag=etag)

    def remove(self, device_id):
        """Delete a device identity; False when the hub did not have it."""
        try:
            self.svc.delete_device(device_id, etag="*")
            return True
        except ServiceError as exc:
            if exc.status == 404:
                return False
            return self.call("remove device %s" % device_id, self.svc.delete_device, device_id, etag="*")


def _default_ca():
    import certifi

    return certifi.where()


# --board -> (sys.platform, text sys.implementation._machine must hold): what the board itself must report.
PLATFORMS = {"unix": ("linux", ""), "esp32": ("esp32", ""), "rp2_pico_w": ("rp2", "Pico W"),
             "rp2_pico_ppp": ("rp2", "PPP")}


def check_board(snap, board, port):
    """Refuse (before anything is written) a board that is not the kind --board names."""
    platform = snap.get("platform")
    name, machine = (snap.get("implementation") or ["?", ""])[:2]
    want, marker = PLATFORMS[board]
    if platform != want or marker not in (machine or ""):
        raise UsageError("the board on %s is not a %s board: it reports sys.platform %r (%s); run with the --board "
                         "it is, or flash the right MicroPython first; nothing was written"
                         % (port, board, platform, machine or name))


def _open_board(opts, say):
    """(roots, board, firmware tree, snapshot) once the roots are ones a device accepts and the board is the
    kind --board names; nothing is written yet."""
    roots = opts.roots if opts.roots is not None else certs.azure_bundle()
    if certs.device_verdict(roots):
        raise UsageError("the root certificates would be refused by the device: %s" % certs.device_verdict(roots))
    board = mpr.Board(opts.port, opts.timeout)
    say("reading the board on %s" % opts.port)
    snap = board.snapshot()
    check_board(snap, opts.board, opts.port)
    tree = device_tree(opts.board, frozen=snap.get("frozen") is True)
    return roots, board, tree, snap


def _keys(doc):
    sym = ((doc or {}).get("authentication") or {}).get("symmetricKey") or {}
    return sym.get("primaryKey"), sym.get("secondaryKey")


def provision(opts, say=print):
    """Provision the board on opts.port; returns a summary dict. Raises UsageError with one line."""
    sas.check_device_id(opts.device_id)
    if opts.group_key:
        sas.derive_device_key(opts.group_key, opts.device_id)  # checks the id is a registration id too
    hub = _Hub(opts)
    forbidden = [hub.policy_key, opts.hub_cs.strip()] + ([opts.group_key] if opts.group_key else [])
    roots, board, tree, snap = _open_board(opts, say)
    files = snap["files"]
    changed = []
    summary = {"device_id": opts.device_id, "port": opts.port, "changed": changed, "hub": "unchanged"}
    old_id = (snap.get("config") or {}).get("device_id")
    old_id = old_id if isinstance(old_id, str) and old_id and old_id != opts.device_id else None
    if old_id and not opts.force:
        raise UsageError("the board on %s is provisioned as device %r: --force re-identifies it as %r (%r stays "
                         "registered on the hub; add --remove-old to delete it there); nothing was written"
                         % (opts.port, old_id, opts.device_id, old_id))
    board_secrets = {}

    def on_board(name):  # a secret the board holds (read only when it must be written again)
        if not board_secrets:
            board_secrets.update(_read_board_secrets(board))
        return board_secrets.get(name)

    # --- the key ---
    same_device = (snap.get("config") or {}).get("device_id") == opts.device_id
    board_key_sha = snap.get("key_sha") if same_device else None
    doc = hub.get(opts.device_id)
    if doc is not None and (doc.get("authentication") or {}).get("type", "sas") != "sas":
        raise UsageError("device %s exists on the hub with X.509 authentication: not a SAS device" % opts.device_id)
    primary, secondary = _keys(doc)
    derived = sas.derive_device_key(opts.group_key, opts.device_id) if opts.group_key else None
    finish_rotation = None  # (primary, secondary) to set once the board has proven its key
    hub_step = None  # (primary, secondary) to set before the board gets lib/ (the key is on it by then)
    if opts.rotate:
        key = derived if derived and derived not in (primary, secondary) else sas.new_key()
        if doc is None:
            hub_step = (key, sas.new_key())
        else:
            # Old and new both work until the board has proven the new one.
            old = primary if board_key_sha == (primary and _key_sha(primary)) else secondary
            hub_step = (old or primary, key)
            finish_rotation = (key, sas.new_key())
        summary["hub"] = "rotated"
    elif board_key_sha and doc is not None and board_key_sha in (_key_sha(primary or ""), _key_sha(secondary or "")):
        key = None  # the board's key is one the hub accepts: keep it
        if board_key_sha != _key_sha(primary or ""):
            finish_rotation = (secondary, sas.new_key())  # an interrupted rotation: finish it
            summary["hub"] = "rotation finished"
    elif doc is not None:
        if derived and derived in (primary, secondary):
            key = derived
        else:
            raise UsageError("device %s already exists on the hub with other credentials (not the key on this "
                             "board); use --rotate-key to give it a new key, or another device id" % opts.device_id)
    elif board_key_sha:
        key = on_board("device_key")  # written by an interrupted run: register it now
        hub_step = (key, sas.new_key())
        summary["hub"] = "created"
    else:
        key = derived or sas.new_key()
        hub_step = (key, sas.new_key())
        summary["hub"] = "created"
    if key is not None and key in forbidden:
        raise UsageError("refused: the device key would be the policy or group key")

    # --- what the board should hold ---
    cfg = make_config(opts, hub.hostname)
    want = {}
    board_pw_sha = snap.get("wifi_password_sha")
    if key is None and opts.wifi_password is not None and board_pw_sha != _key_sha(opts.wifi_password):
        key = on_board("device_key")  # a new Wi-Fi password: secrets.json is written again, with the same key
    if key is not None:
        secrets = {"device_key": key}
        pw = opts.wifi_password
        if pw is None and board_pw_sha:
            pw = on_board("wifi_password")  # not asked to change it: the board keeps its Wi-Fi password
        if pw:
            secrets["wifi_password"] = pw
        _checked(cfg, secrets)
        want[SECRETS] = json.dumps(secrets, sort_keys=True).encode()
    else:
        _checked(cfg, {"device_key": base64.b64encode(b"\0" * 32).decode()})
    want[CONFIG] = json.dumps(cfg, sort_keys=True).encode()
    guard(want, forbidden)
    roots_path = "/certs/active/roots.pem"
    certs_fresh = {}
    certs_onboard = False
    if not any(p.startswith("/certs/") for p in files):
        certs_fresh = fresh_cert_store(roots)
    elif roots_path not in files or files[roots_path][0] != _sha(roots):
        certs_onboard = True
    firmware = {p: d for p, d in tree.items()}
    guard(firmware, forbidden, credentials=False)
    plan = dict(certs_fresh)
    plan.update(want)
    plan.update(firmware)
    todo = {p: d for p, d in plan.items() if files.get("/" + p, [None])[0] != _sha(d)}
    _check_space(snap, todo, opts.port)

    with tempfile.TemporaryDirectory() as tmp:
        stage = pathlib.Path(tmp)
        first = {p: todo[p] for p in certs_fresh if p in todo}
        first.update({p: todo[p] for p in (SECRETS, CONFIG) if p in todo})
        if first:
            say("writing %s" % ", ".join(sorted(first)))
            _write(board, stage, first, files, atomic=(SECRETS, CONFIG))
            changed.extend(sorted(first))
        if hub_step:
            say("hub: %s device %s" % ("updating" if doc else "registering", opts.device_id))
            hub.put(opts.device_id, hub_step[0], hub_step[1], etag=(doc.get("etag") or "*") if doc else None)
        rest = {p: d for p, d in todo.items() if p not in first}
        if rest:
            say("writing %d firmware files" % len(rest))
            _write(board, stage, rest, files)
            changed.extend(sorted(rest))
        if certs_onboard:
            say("installing the root certificates with the board's certstore")
            _install_roots_on_board(board, stage, roots)
            changed.append("certs/active")
    say("checking: a token minted on the board, presented to the hub")
    _check_on_hub(board, opts, hub.hostname, roots)
    if finish_rotation:
        hub.put(opts.device_id, finish_rotation[0], finish_rotation[1], etag="*")
        if summary["hub"] == "unchanged":
            summary["hub"] = "rotation finished"
    summary["check"] = "accepted"
    if old_id:
        if opts.remove_old:
            summary["old"] = "%s removed from the hub" % old_id if hub.remove(old_id) else \
                "%s was not on the hub" % old_id
        else:
            summary["old"] = "%s is still registered on the hub (remove it with --remove-old)" % old_id
        say("old identity: " + summary["old"])
    if opts.reset:
        # Also when nothing changed: mpremote's session interrupted the firmware.
        board.run("reset")
        summary["reset"] = True
    return summary


def _read_board_secrets(board):
    code = "import json\nprint('UPYHUB-SECRETS ' + json.dumps(json.load(open('/secrets.json'))))"
    found = board.tagged(code, "UPYHUB-SECRETS")
    return found if isinstance(found, dict) else {}


def _check_space(snap, todo, port):
    free = snap.get("free")
    if free is None:
        return
    files = snap["files"]
    need = sum(len(d) - (files.get("/" + p) or [None, 0])[1] for p, d in todo.items())
    need += 4096 * len({str(pathlib.PurePosixPath(p).parent) for p in todo})  # folders, temp names
    if need > free:
        raise UpyhubError("the board's flash on %s is too full: provisioning needs about %d more bytes, %d are free; "
                         "nothing was written" % (port, need, free))


_MKDIRS = """
import os
for d in %r:
    try:
        os.mkdir(d)
    except OSError:
        pass
"""


def _write(board, stage, files, existing, atomic=()):
    """Copy files to the board in one mpremote session; `atomic` ones through a temporary name."""
    dirs = set()
    for p in files:
        parent = pathlib.PurePosixPath("/" + p).parent
        while str(parent) != "/":
            if str(parent) + "/" not in existing:
                dirs.add(str(parent))
            parent = parent.parent
    cmd = []
    if dirs:
        cmd += ["exec", _MKDIRS % sorted(dirs, key=lambda d: d.count("/")), "+"]
    renames = []
    for i, (p, data) in enumerate(sorted(files.items())):
        local = stage / ("f%d" % i)
        local.write_bytes(data)
        dest = "/" + p + (".tmp" if p in atomic else "")
        cmd += ["fs", "cp", str(local), ":" + dest, "+"]
        if p in atomic:
            renames.append(("/" + p + ".tmp", "/" + p))
    if renames:
        cmd += ["exec", "import os\n" + "".join("os.rename(%r, %r)\n" % r for r in renames), "+"]
    try:
        board.run(*cmd[:-1])
    except mpr.BoardError as exc:
        if "No space left" in str(exc) or "ENOSPC" in str(exc) or "28" in str(exc).split():
            raise UpyhubError("the board's flash on %s is full; run again after freeing space" % board.port)
        raise
    finally:
        for f in stage.iterdir():
            f.unlink()


# The store checks the roots' dates against the board's clock, which a board just powered on may not have yet
# (a Pico has no RTC battery; NTP comes with main.py): set it from this host's, in UTC, when it is unset.
_BOARD_CLOCK = """
from iothub import clock
if not clock.is_set():
    import machine, time
    _t = time.gmtime(%d - clock.epoch_offset())
    machine.RTC().datetime((_t[0], _t[1], _t[2], _t[6] + 1, _t[3], _t[4], _t[5], 0))
"""

_INSTALL_ROOTS = """
import os
from iothub import certstore
with open('/certs.incoming', 'rb') as f:
    data = f.read()
os.remove('/certs.incoming')
certstore.Store('/certs').install_active(data, source='provision')
print('UPYHUB-ROOTS ok')
"""


def _install_roots_on_board(board, stage, roots):
    local = stage / "roots"
    local.write_bytes(roots)
    board.run("fs", "cp", str(local), ":/certs.incoming", "+", "exec", _BOARD_CLOCK % int(time.time()) + _INSTALL_ROOTS)
    local.unlink()


# The expiry is the host's: a board being provisioned may not have its clock set yet (a Pico has no RTC battery).
_TOKEN = """
import json
from iothub import sas
cfg = json.load(open('/config.json'))
sec = json.load(open('/secrets.json'))
print('UPYHUB-TOKEN ' + json.dumps(sas.token(cfg['hostname'] + '/devices/' + cfg['device_id'], sec['device_key'], %d)))
"""


def _check_on_hub(board, opts, hostname, roots):
    token = board.tagged(_TOKEN % (int(time.time()) + 300), "UPYHUB-TOKEN")
    rc = mqtt_connect(opts.gateway or hostname, opts.mqtt_port, hostname, roots, opts.device_id, token,
                      timeout=opts.timeout)
    if rc != 0:
        raise UpyhubError("the hub refused the token minted on the board (CONNACK %d): the key on the board is not "
                         "one the hub has for %s" % (rc, opts.device_id))


def _roots_context(roots):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name; trusts only `roots`
    ctx.load_verify_locations(cadata=roots if roots[:1] == b"\x30" else roots.decode("ascii"))
    return ctx


def _s(text):
    """An MQTT UTF-8 string: length, then bytes."""
    b = text.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first, body):
    """An MQTT packet: first byte, remaining length, body."""
    n, rem = len(body), b""
    while True:
        d, n = n % 128, n // 128
        rem += bytes([d | (0x80 if n else 0)])
        if not n:
            return bytes([first]) + rem + body


def _connect_packet(client_id, user, password):
    return _packet(0x10, _s("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 60) + _s(client_id) + _s(user) +
                   _s(password))


def mqtt_connect(address, port, hostname, roots, device_id, token, timeout=60):
    """One MQTT 3.1.1 CONNECT over TLS as the device; returns the CONNACK return code (0: accepted)."""
    ctx = _roots_context(roots)
    user = "%s/%s/?api-version=2021-04-12" % (hostname, device_id)
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
                tls.sendall(_connect_packet(device_id, user, token))
                ack = b""
                while len(ack) < 4:
                    chunk = tls.recv(4 - len(ack))
                    if not chunk:
                        break
                    ack += chunk
                if len(ack) == 4 and ack[0] == 0x20:
                    if ack[3] == 0:
                        tls.sendall(b"\xe0\x00")  # DISCONNECT
                    return ack[3]
                return 5 if not ack else 255  # a hub may just close on bad credentials
    except ssl.SSLError as exc:
        raise UpyhubError("TLS to the hub's MQTT port %s:%d failed: %s" % (address, port, network_reason(exc)))
    except OSError as exc:
        raise UpyhubError("cannot reach the hub's MQTT port %s:%d: %s" % (address, port, network_reason(exc)))


def local_hub(data_dir):
    """What provisioning needs to reach the running local hub of `data_dir`, found as the hub verbs find it:
    {hub_cs (registryReadWrite), hub_ca, gateway, https_port, mqtt_port}."""
    from upyhub import sim
    from upyhub.hub.registry import Registry

    hostname, host, mqtt_port, service, _ = sim.hub_info(data_dir)
    reg = Registry(pathlib.Path(data_dir))
    try:
        cs = reg.connection_string(hostname, "registryReadWrite")
    finally:
        reg.close()
    from upyhub.hub.pki import PKI

    return {"hub_cs": cs, "hub_ca": str(PKI(pathlib.Path(data_dir)).ca_path()), "gateway": host,
            "https_port": service.port, "mqtt_port": mqtt_port}


def read_secret_file(path, what):
    try:
        text = pathlib.Path(path).read_text().strip()
    except OSError:
        raise UsageError("cannot read the %s file %s" % (what, path))
    if not text:
        raise UsageError("the %s file %s is empty" % (what, path))
    return text


def load_batch(path):
    """Rows of a devices CSV: port,device_id[,wifi_ssid] (a header line naming them is allowed)."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except OSError:
        raise UsageError("cannot read the batch file %s" % path)
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["port", "device_id"]:
        rows = rows[1:]
    out = []
    for i, r in enumerate(rows, 1):
        if len(r) < 2 or not r[0].strip() or not r[1].strip():
            raise UsageError("%s row %d: needs port,device_id" % (path, i))
        out.append({"port": r[0].strip(), "device_id": r[1].strip(),
                    "wifi_ssid": r[2].strip() if len(r) > 2 and r[2].strip() else None})
    if not out:
        raise UsageError("the batch file %s lists no boards" % path)
    return out


def copy_options(opts, **changes):
    new = type(opts).__new__(type(opts))
    new.__dict__.update(opts.__dict__)
    new.__dict__.update(changes)
    return new



# --- DPS: the board learns its hub at its first boot --------------------------------------------------------

class DpsOptions:
    """What `upyhub provision --dps` was asked: the board gets an ID scope, its registration id and its own key
    (derived from the group key, or an individual enrollment's); the group key never goes to it."""

    def __init__(self, port, registration_id, id_scope, board="esp32", endpoint="global.azure-devices-provisioning.net",
                 dps_port=8883, dps_gateway=None, hub_gateway=None, hub_port=8883, roots=None, wifi_ssid=None,
                 wifi_password=None,
                 group_key=None, enroll_data=None, reset=True, timeout=120, ntp=("pool.ntp.org",),
                 telemetry_interval=10, force=False, device_gateway=None):
        self.port, self.registration_id, self.id_scope, self.board = port, registration_id, id_scope, board
        self.device_gateway = device_gateway  # where the board reaches DPS and its hub, when not where this host does
        self.endpoint, self.dps_port, self.dps_gateway, self.hub_gateway = endpoint, dps_port, dps_gateway, hub_gateway
        self.hub_port = hub_port
        self.roots, self.wifi_ssid, self.wifi_password = roots, wifi_ssid, wifi_password
        self.group_key, self.enroll_data, self.reset, self.timeout = group_key, enroll_data, reset, timeout
        self.ntp, self.telemetry_interval, self.force = list(ntp), telemetry_interval, force


def dps_config(opts):
    d = {"id_scope": opts.id_scope, "registration_id": opts.registration_id, "endpoint": opts.endpoint,
         "port": opts.dps_port}
    if opts.device_gateway or opts.dps_gateway:
        d["gateway"] = opts.device_gateway or opts.dps_gateway
    cfg = {"dps": d, "auth": "sas", "certs_dir": "certs", "ntp": opts.ntp, "telemetry_interval": opts.telemetry_interval,
           "port": opts.hub_port}  # the assigned hub's MQTT port (8883 on Azure)
    if opts.device_gateway or opts.hub_gateway:
        cfg["gateway"] = opts.device_gateway or opts.hub_gateway
    if opts.wifi_ssid:
        cfg["wifi"] = {"ssid": opts.wifi_ssid}
    return cfg


def provision_dps(opts, say=print):
    """Provision the board on opts.port for DPS; returns a summary dict. The check: a DPS token minted on the
    board with its flashed key, presented to DPS, which must assign it a hub."""
    try:
        sas.check_registration_id(opts.registration_id)
    except ValueError as exc:
        raise UsageError("registration id: %s" % exc)
    if not opts.group_key and not opts.enroll_data:
        raise UsageError("--dps needs the device's key: --group-key-file (a group enrollment's key, from which the "
                         "device's own is derived) or --enroll (an individual enrollment on the local DPS)")
    forbidden = [opts.group_key] if opts.group_key else []
    roots, board, tree, snap = _open_board(opts, say)
    files = snap["files"]
    cfg_now = snap.get("config") or {}
    old = (cfg_now.get("dps") or {}).get("registration_id") if isinstance(cfg_now.get("dps"), dict) else \
        cfg_now.get("device_id")
    if isinstance(old, str) and old and old != opts.registration_id and not opts.force:
        raise UsageError("the board on %s is provisioned as %r: --force re-identifies it as %r; nothing was written"
                         % (opts.port, old, opts.registration_id))
    summary = {"registration_id": opts.registration_id, "port": opts.port, "changed": []}
    same = old == opts.registration_id
    key = None
    if opts.group_key:
        key = sas.derive_device_key(opts.group_key, opts.registration_id)
        summary["enrollment"] = "group"
    else:
        from upyhub.hub import dps

        existing = _dps_enrollment(opts.enroll_data, opts.registration_id)
        board_key = _read_board_secrets(board).get("device_key") if same and snap.get("key_sha") else None
        if existing is not None:
            keys = existing["attestation"]["symmetricKey"]
            if board_key in (keys["primaryKey"], keys["secondaryKey"]):
                key = board_key
            else:
                raise UsageError("registration %s already has an individual enrollment with other keys than this "
                                 "board's; remove it (upyhub hub dps enrollment remove) or use another id"
                                 % opts.registration_id)
            summary["enrollment"] = "individual (unchanged)"
        else:
            key = board_key or sas.new_key()
            dps.create_enrollment(opts.enroll_data, opts.registration_id, primary_key=key, secondary_key=sas.new_key())
            summary["enrollment"] = "individual (created)"
    cfg = dps_config(opts)
    secrets = {"device_key": key}
    pw = opts.wifi_password
    if pw is None and same and snap.get("wifi_password_sha"):
        pw = _read_board_secrets(board).get("wifi_password")
    if pw:
        secrets["wifi_password"] = pw
    _checked(cfg, secrets)
    want = {SECRETS: json.dumps(secrets, sort_keys=True).encode(), CONFIG: json.dumps(cfg, sort_keys=True).encode()}
    guard(want, forbidden)
    certs_fresh = {} if any(p.startswith("/certs/") for p in files) else fresh_cert_store(roots)
    guard(tree, forbidden, credentials=False)
    plan = dict(certs_fresh)
    plan.update(want)
    plan.update(tree)
    todo = {p: d for p, d in plan.items() if files.get("/" + p, [None])[0] != _sha(d)}
    if "/dps.json" in files and (SECRETS in todo or CONFIG in todo):
        todo["dps.json"] = b""  # another registration or key: the first boot registers again
    _check_space(snap, todo, opts.port)
    with tempfile.TemporaryDirectory() as tmp:
        stage = pathlib.Path(tmp)
        first = {p: todo[p] for p in list(certs_fresh) + [SECRETS, CONFIG, "dps.json"] if p in todo}
        if first:
            say("writing %s" % ", ".join(sorted(first)))
            _write(board, stage, first, files, atomic=(SECRETS, CONFIG))
        rest = {p: d for p, d in todo.items() if p not in first}
        if rest:
            say("writing %d firmware files" % len(rest))
            _write(board, stage, rest, files)
        summary["changed"] = sorted(todo)
    say("checking: a DPS token minted on the board, presented to DPS")
    token = board.tagged(_DPS_TOKEN % (int(time.time()) + 300), "UPYHUB-TOKEN")
    hub, device = dps_register(opts.dps_gateway or opts.endpoint, opts.dps_port, opts.endpoint, roots, opts.id_scope,
                               opts.registration_id, token, timeout=opts.timeout)
    summary["assigned"] = {"hub": hub, "device_id": device}
    if opts.reset:
        board.run("reset")
        summary["reset"] = True
    return summary


def _dps_enrollment(data, registration_id):
    from upyhub.hub import HubError, dps

    try:
        return dps.get_enrollment(data, registration_id, keys=True)
    except HubError:
        return None


_DPS_TOKEN = """
import json
from iothub import sas
cfg = json.load(open('/config.json'))['dps']
sec = json.load(open('/secrets.json'))
print('UPYHUB-TOKEN ' + json.dumps(sas.token(cfg['id_scope'] + '/registrations/' + cfg['registration_id'],
                                             sec['device_key'], %d, policy='registration')))
"""


def dps_register(address, port, hostname, roots, id_scope, registration_id, token, timeout=60):
    """Register with DPS over MQTT as the device would (Azure's protocol); returns (assigned hub, device id).
    Raises UpyhubError with DPS's reason when it refuses."""
    ctx = _roots_context(roots)

    def read(tls):
        first = tls.recv(1)
        if not first:
            raise UpyhubError("DPS closed the connection")
        n, shift = 0, 0
        while True:
            b = tls.recv(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        body = b""
        while len(body) < n:
            chunk = tls.recv(n - len(body))
            if not chunk:
                raise UpyhubError("DPS closed the connection")
            body += chunk
        return first[0], body

    user = "%s/registrations/%s/api-version=2019-03-31" % (id_scope, registration_id)
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=hostname) as tls:
                tls.sendall(_connect_packet(registration_id, user, token))
                kind, body = read(tls)
                if kind != 0x20 or body[1] != 0:
                    raise UpyhubError("DPS refused the registration's CONNECT (CONNACK %d)" % (body[1] if body else -1))
                tls.sendall(_packet(0x82, b"\x00\x01" + _s("$dps/registrations/res/#") + b"\x01"))
                rid = 1
                tls.sendall(_packet(0x30, _s("$dps/registrations/PUT/iotdps-register/?$rid=1") +
                                   json.dumps({"registrationId": registration_id}).encode()))
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    kind, body = read(tls)
                    if kind & 0xF0 != 0x30:
                        continue
                    qos = (kind >> 1) & 3
                    tlen = struct.unpack("!H", body[:2])[0]
                    topic = body[2:2 + tlen].decode()
                    doc = json.loads(body[2 + tlen + (2 if qos else 0):] or b"null")
                    if qos:
                        tls.sendall(b"\x40\x02" + body[2 + tlen:4 + tlen])
                    status = int(topic.split("/")[3])
                    if status == 200 and doc.get("status") == "assigned":
                        state = doc["registrationState"]
                        return state["assignedHub"], state["deviceId"]
                    if status != 202:
                        raise UpyhubError("DPS refused the registration (%d): %s" % (status, doc.get("message", "")))
                    time.sleep(min(3, max(1, int(dict(p.split("=", 1) for p in topic.split("?", 1)[1].split("&")
                                                      if "=" in p).get("retry-after", 1)))))
                    rid += 1
                    tls.sendall(_packet(0x30, _s("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=%d&"
                                               "operationId=%s" % (rid, doc["operationId"]))))
                raise UpyhubError("DPS did not assign a hub within %d s" % timeout)
    except ssl.SSLError as exc:
        raise UpyhubError("TLS to DPS at %s:%d failed: %s" % (address, port, network_reason(exc)))
    except OSError as exc:
        raise UpyhubError("cannot reach DPS at %s:%d: %s" % (address, port, network_reason(exc)))
