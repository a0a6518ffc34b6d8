"""The token service: a solution's own device authentication handing out short-lived IoT Hub device tokens.

The "token-service pattern" of Azure IoT's security guidance: the solution authenticates its devices its
own way and gives each a SAS token scoped to that one device (`sr={hub}/devices/{id}`), signed by a shared
access policy with DeviceConnect that only the service holds. No hub key is ever on a device.

Custom registry: a CSV file (mode 0600: it holds the secrets), header `device_id,secret_b64,enabled`, one
device a line; secret_b64 is a base64 per-device secret of 16..64 bytes, NOT a hub key; enabled is
true/false (or 1/0, yes/no). The service re-reads it when it changes: disabling a device takes effect at
its next request (a malformed edit is logged and the previous contents kept).

Protocol (HTTPS, TLS 1.2+, the hub's server certificate, so devices verify it with the hub CA):
  GET  /challenge?deviceId={percent-encoded id}
       200 {"nonce": "<43 base64url characters>", "expiresOn": <unix s>}
  POST /token   Content-Type: application/json
       {"deviceId": id, "nonce": nonce, "mac": base64(HMAC-SHA256(base64decode(secret_b64),
                                                                  UTF-8(deviceId + "\\n" + nonce)))}
       200 {"sasToken": "SharedAccessSignature sr={hub}%2Fdevices%2F{id}&sig=...&se=...&skn={policy}",
            "expiresOn": <unix s, the token's se>}
  errors: JSON {"error": "BadRequest|Unauthorized|Forbidden|NotFound", "message": "<one line>"} with
       400 (malformed: not JSON, missing or mistyped fields, bad device id, body over 4 KB),
       401 (nonce unknown, expired, already used or issued to another device; wrong mac),
       403 (device disabled in the custom registry), 404 (device not in the custom registry).
Nonces are single use (a POST /token naming one uses it up, whatever the outcome) and expire after
nonce_ttl seconds (60); a device has at most MAX_NONCES_PER_DEVICE outstanding (the oldest is dropped).
The device must also exist, enabled, in the hub's registry (`upyhub hub device add ID`: its keys stay in
the hub). Secrets, macs and tokens are never logged.
"""
import asyncio
import base64
import binascii
import collections
import csv
import hashlib
import hmac
import io
import json
import logging
import os
import pathlib
import signal
import stat
import time
import urllib.parse

from aiohttp import web

from upyhub import files, sas
from upyhub.errors import UsageError
from upyhub.hub import HubError

log = logging.getLogger("upyhub.tokens")
DEFAULT_PORT = 8445
DEFAULT_TTL = 600
DEFAULT_NONCE_TTL = 60
HEADER = ["device_id", "secret_b64", "enabled"]
MAX_BODY = 4096
MAX_NONCES_PER_DEVICE = 4
MAX_NONCES = 100000
MAX_FIELD = 256  # characters of a nonce or mac
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


# --- the custom registry (CSV) ---
def _secret(text, where):
    return sas.decode_key(text, "%s: secret_b64" % where)


def parse_registry(text, name="registry"):
    """{device_id: (secret bytes, enabled)} from the CSV text; UsageError naming the line (never a secret)."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != HEADER:
        raise UsageError("%s: the first line must be %s" % (name, ",".join(HEADER)))
    devices = {}
    for n, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        where = "%s line %d" % (name, n)
        if len(row) != 3:
            raise UsageError("%s: expected 3 fields (%s)" % (where, ",".join(HEADER)))
        device_id, secret, enabled = (c.strip() for c in row)
        try:
            sas.check_device_id(device_id)
        except UsageError as e:
            raise UsageError("%s: %s" % (where, e)) from None
        if device_id in devices:
            raise UsageError("%s: device %r is listed twice" % (where, device_id))
        if enabled.lower() not in TRUE + FALSE:
            raise UsageError("%s: enabled must be true or false" % where)
        devices[device_id] = (_secret(secret, where), enabled.lower() in TRUE)
    return devices


def read_registry(path):
    p = pathlib.Path(path)
    data = files.read_file(p, "custom registry")
    if p.stat().st_mode & 0o077:
        raise UsageError("%s holds device secrets but other users may read it: chmod 600 %s" % (p, p))
    try:
        return parse_registry(data.decode("utf-8"), p.name)
    except UnicodeDecodeError:
        raise UsageError("%s is not UTF-8 text" % p) from None


def write_registry(path, devices):
    """Write {device_id: (secret bytes, enabled)} whole (temp file + rename), mode 0600."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for device_id, (secret, enabled) in sorted(devices.items()):
        w.writerow([device_id, base64.b64encode(secret).decode(), "true" if enabled else "false"])
    files.write_atomic(path, buf.getvalue().encode(), private=True)


def _registry_or_empty(path):
    return read_registry(path) if pathlib.Path(path).exists() else {}


def add_device(path, device_id, secret_b64=None, enabled=True):
    """Add a device to the custom registry (created if absent); returns its secret (base64)."""
    sas.check_device_id(device_id)
    devices = _registry_or_empty(path)
    if device_id in devices:
        raise HubError("device %r is already in %s" % (device_id, path))
    secret = _secret(secret_b64, "the secret") if secret_b64 else os.urandom(32)
    devices[device_id] = (secret, enabled)
    write_registry(path, devices)
    return base64.b64encode(secret).decode()


def set_enabled(path, device_id, enabled):
    devices = read_registry(path)
    if device_id not in devices:
        raise HubError("device %r is not in %s" % (device_id, path))
    devices[device_id] = (devices[device_id][0], enabled)
    write_registry(path, devices)


def remove_device(path, device_id):
    devices = read_registry(path)
    if devices.pop(device_id, None) is None:
        raise HubError("device %r is not in %s" % (device_id, path))
    write_registry(path, devices)


def compute_mac(secret_b64, device_id, nonce):
    """What a device sends: base64(HMAC-SHA256(base64decode(secret), deviceId + "\\n" + nonce))."""
    key = _secret(secret_b64, "the secret")
    return base64.b64encode(hmac.new(key, (device_id + "\n" + nonce).encode(), hashlib.sha256).digest()).decode()


# --- the service ---
class Refusal(Exception):
    NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message

    def response(self):
        return web.json_response({"error": self.NAMES[self.status], "message": self.message}, status=self.status)


class Nonces:
    """Single-use challenges: nonce -> (device id, expiry); bounded per device and overall."""

    def __init__(self, ttl=DEFAULT_NONCE_TTL, clock=time.time):
        self.ttl, self.clock = ttl, clock
        self._by_nonce = collections.OrderedDict()
        self._by_device = collections.defaultdict(collections.deque)

    def _expire(self, now):
        while self._by_nonce:
            nonce, (device_id, expires) = next(iter(self._by_nonce.items()))
            if expires > now and len(self._by_nonce) < MAX_NONCES:
                break
            self._drop(nonce)

    def _drop(self, nonce):
        device_id, _ = self._by_nonce.pop(nonce)
        queue = self._by_device[device_id]
        if nonce in queue:
            queue.remove(nonce)
        if not queue:
            del self._by_device[device_id]

    def issue(self, device_id):
        now = self.clock()
        self._expire(now)
        queue = self._by_device[device_id]
        while len(queue) >= MAX_NONCES_PER_DEVICE:
            self._drop(queue[0])
            queue = self._by_device[device_id]
        nonce = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
        expires = int(now + self.ttl)
        self._by_nonce[nonce] = (device_id, now + self.ttl)
        queue.append(nonce)
        return nonce, expires

    def take(self, nonce):
        """The device id the nonce was issued to, once; None when unknown, expired or used."""
        entry = self._by_nonce.get(nonce)
        if entry is None:
            return None
        self._drop(nonce)
        return entry[0] if entry[1] > self.clock() else None


def policy_key(data_dir, name):
    """(hub hostname, key) of a local hub policy the service may sign device tokens with: it must have
    DeviceConnect. UsageError otherwise (a usage error: exit status 2)."""
    from upyhub.hub import pki, registry
    data = pathlib.Path(data_dir)
    if not (data / "hub.db").exists():
        raise HubError("no hub in %s: run `upyhub hub init` first" % data)
    reg = registry.Registry(data)
    try:
        policy = reg.get_policy(name)
    finally:
        reg.close()
    if policy is None:
        raise UsageError("no shared access policy %r (see `upyhub hub policy list`)" % name)
    if "DeviceConnect" not in policy["rights"]:
        raise UsageError("policy %r has no DeviceConnect (it has %s): device tokens need a policy with "
                         "DeviceConnect, e.g. 'device'" % (name, ", ".join(policy["rights"])))
    return pki.PKI(data).hostname, policy["primary_key"]


class TokenService:
    def __init__(self, hostname, policy, key_b64, registry_path, ttl=DEFAULT_TTL, nonce_ttl=DEFAULT_NONCE_TTL):
        sas.decode_key(key_b64, "policy key")
        self.hostname, self.policy, self._key = hostname, policy, key_b64
        self.registry_path = pathlib.Path(registry_path)
        self.ttl = ttl
        self.nonces = Nonces(nonce_ttl)
        self._stamp = None
        self.devices = {}
        self.reload(strict=True)

    def reload(self, strict=False):
        """Re-read the custom registry when the file changed; a bad edit keeps the previous contents."""
        try:
            st = self.registry_path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size, stat.S_IMODE(st.st_mode))
            if stamp == self._stamp:
                return
            self.devices = read_registry(self.registry_path)
            self._stamp = stamp
            log.info("custom registry %s: %d devices", self.registry_path, len(self.devices))
        except (UsageError, OSError) as e:
            if strict:
                raise UsageError(str(e) if isinstance(e, UsageError) else "cannot read %s: %s"
                                 % (self.registry_path, e.strerror)) from None
            log.warning("custom registry %s not reloaded (keeping the previous one): %s", self.registry_path,
                        e if isinstance(e, UsageError) else e.strerror)

    def _device(self, device_id):
        if not isinstance(device_id, str):
            raise Refusal(400, "deviceId is missing or not a string")
        try:
            sas.check_device_id(device_id)
        except UsageError as e:
            raise Refusal(400, str(e)) from None
        self.reload()
        entry = self.devices.get(device_id)
        if entry is None:
            raise Refusal(404, "device %s is not in the registry" % device_id)
        return entry

    def challenge(self, device_id):
        _, enabled = self._device(device_id)
        if not enabled:
            raise Refusal(403, "device %s is disabled" % device_id)
        nonce, expires = self.nonces.issue(device_id)
        return {"nonce": nonce, "expiresOn": expires}

    def token(self, doc):
        if not isinstance(doc, dict):
            raise Refusal(400, "the body must be a JSON object {deviceId, nonce, mac}")
        nonce, mac = doc.get("nonce"), doc.get("mac")
        if not all(isinstance(v, str) and 0 < len(v) <= MAX_FIELD for v in (nonce, mac)):
            raise Refusal(400, "nonce and mac must be non-empty strings")
        device_id = doc.get("deviceId")
        secret, enabled = self._device(device_id)
        issued_to = self.nonces.take(nonce)  # used up now, whatever follows
        if issued_to is None:
            raise Refusal(401, "nonce unknown, expired or already used")
        if issued_to != device_id:
            raise Refusal(401, "nonce was issued to another device")
        try:
            given = base64.b64decode(mac, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(400, "mac is not base64") from None
        expected = hmac.new(secret, (device_id + "\n" + nonce).encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(given, expected):
            raise Refusal(401, "mac does not match")
        if not enabled:
            raise Refusal(403, "device %s is disabled" % device_id)
        expires = int(time.time()) + self.ttl
        token = sas.mint("%s/devices/%s" % (self.hostname, device_id), self._key, expires, policy=self.policy)
        return {"sasToken": token, "expiresOn": expires}


def make_app(svc):
    routes = web.RouteTableDef()

    def answer(what, device_id, fn, *args):
        try:
            doc = fn(*args)
        except Refusal as r:
            log.warning("refused %s for %r: %s (%d)", what, str(device_id)[:160], r.message, r.status)
            return r.response()
        log.info("%s for %s", "issued a token (expires %d)" % doc["expiresOn"] if what == "token" else
                 "issued a nonce", device_id)
        return web.json_response(doc)

    @routes.get("/challenge")
    async def challenge(request):
        device_id = request.query.get("deviceId")
        return answer("challenge", device_id, svc.challenge, device_id)

    @routes.post("/token")
    async def token(request):
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return Refusal(400, "body over %d bytes" % MAX_BODY).response()
        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return Refusal(400, "the body is not JSON").response()
        return answer("token", doc.get("deviceId") if isinstance(doc, dict) else None, svc.token, doc)

    @web.middleware
    async def errors(request, handler):
        try:
            return await handler(request)
        except web.HTTPException as e:  # unknown path or method (404, 405), a malformed request
            if e.status < 400:
                raise
            if e.status in (404, 405):
                return Refusal(404, "no such endpoint: GET /challenge, POST /token").response()
            return Refusal(400, e.reason).response()
        except Exception as e:  # a bug, not the client's fault: one line, no traceback to the client
            log.error("%s %s failed: %s", request.method, request.path, type(e).__name__)
            return web.json_response({"error": "ServerError", "message": "internal error"}, status=500)

    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors])
    app.add_routes(routes)
    return app


async def run(data_dir, registry_path, policy="device", bind="0.0.0.0", port=DEFAULT_PORT, ttl=DEFAULT_TTL,
              nonce_ttl=DEFAULT_NONCE_TTL, ready=None):
    from upyhub.hub import pki as pki_mod, server, tls
    hostname, key = policy_key(data_dir, policy)
    svc = TokenService(hostname, policy, key, registry_path, ttl, nonce_ttl)
    pki = pki_mod.PKI(data_dir)
    ctx = tls.ServerTLS(pki)
    sock = server.listen(bind, port)
    runner = web.AppRunner(make_app(svc), access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ctx.https_listener, shutdown_timeout=0.5).start()
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("upyhub token service (device tokens from the solution's own registry; no hub key on devices)")
    print("  HTTPS      %s:%d   (GET /challenge, POST /token; the hub's certificate: verify with its CA)"
          % (bind, port))
    print("  tokens     sr=%s/devices/{id}, skn=%s, valid %d s" % (hostname, policy, ttl))
    print("  registry   %s   (%d devices; re-read when it changes)" % (registry_path, len(svc.devices)))
    print("Ctrl-C stops the service.")
    print("token_service_port=%d" % port, flush=True)
    if ready:
        ready(port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(data_dir, registry_path, policy="device", bind="0.0.0.0", port=DEFAULT_PORT, ttl=DEFAULT_TTL,
          nonce_ttl=DEFAULT_NONCE_TTL, verbose=False):
    from upyhub.hub import logs
    logs.install(verbose)
    asyncio.run(run(data_dir, registry_path, policy, bind, port, ttl, nonce_ttl))


# --- a client (CPython), for tests and tools: what the firmware does ---
def fetch_token(host, port, ca_path, server_hostname, device_id, secret_b64, timeout=30):
    """Challenge, answer and get a token; returns the service's JSON ({"sasToken", "expiresOn"}).
    Connects to host:port and verifies the certificate for server_hostname against ca_path.
    Raises Refusal (with the service's status and message) when it says no."""
    import ssl

    from upyhub.hub.client import _Conn
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_path))

    def call(method, path, body=None):
        conn = _Conn(host, port, server_hostname, ctx, timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        try:
            doc = json.loads(data or b"null")
        except ValueError:
            doc = None
        if resp.status != 200 or not isinstance(doc, dict):
            raise Refusal(resp.status, doc.get("message", "") if isinstance(doc, dict) else "not JSON")
        return doc

    nonce = call("GET", "/challenge?deviceId=" + urllib.parse.quote(device_id, safe=""))["nonce"]
    return call("POST", "/token", {"deviceId": device_id, "nonce": nonce,
                                   "mac": compute_mac(secret_b64, device_id, nonce)})
