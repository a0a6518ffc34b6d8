"""ServiceClient: the hub's service API from Python, standard library only.

    svc = ServiceClient(connection_string, ca_path, host="127.0.0.1", port=8443)
    svc.put_device("dev1"); svc.send_c2d("dev1", "hi", {"k": "v"}); svc.invoke_method("dev1", "reboot", {}, 10)

TLS verifies the hub certificate against ca_path (one file or a list of files) for the connection string's HostName while connecting
to `host` (hub hostnames need not resolve). Tokens are minted per request from the policy key.
Non-2xx answers raise ServiceError(status, message); invoke_method raises it for 404 (device offline)
and 504 (no answer in time).
"""
import http.client
import json
import socket
import ssl
import time
import urllib.parse

from upyhub import sas
from upyhub.errors import UsageError
from upyhub.hub import HubError

API = "api-version=2021-04-12"


class ServiceError(Exception):
    def __init__(self, status, message):
        super().__init__("HTTP %d: %s" % (status, message))
        self.status, self.message = status, message


def describe_network_error(exc, host, port):
    """One line for a failure to talk to the service API at host:port (never a key or token)."""
    where = "%s:%s" % (host, port)
    if isinstance(exc, socket.gaierror):
        return "cannot resolve %s (%s)" % (host, exc.strerror or "unknown host")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "the service API at %s does not present a certificate the hub CA verifies (%s)" % (
            where, exc.verify_message or "verification failed")
    if isinstance(exc, ssl.SSLError):
        return "TLS with the service API at %s failed (%s)" % (where, exc.reason or type(exc).__name__)
    if isinstance(exc, ConnectionRefusedError):
        return "nothing listens on %s (connection refused): is the hub running?" % where
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer from %s (timed out)" % where
    if isinstance(exc, http.client.HTTPException):
        return "the service API at %s broke off its answer (%s)" % (where, type(exc).__name__)
    return "cannot reach the service API at %s: %s" % (where, exc.strerror or type(exc).__name__)


class _Conn(http.client.HTTPSConnection):
    """HTTPS to `address` with certificate checks for `hostname`."""

    def __init__(self, address, port, hostname, context, timeout):
        super().__init__(hostname, port, context=context, timeout=timeout)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class ServiceClient:
    def __init__(self, connection_string, ca_path, host=None, port=None, timeout=60):
        cs = sas.parse_connection_string(connection_string)
        if "SharedAccessKeyName" not in cs or "SharedAccessKey" not in cs:
            raise UsageError("a service connection string needs SharedAccessKeyName and SharedAccessKey")
        self.hostname, self.policy, self._key = cs["HostName"], cs["SharedAccessKeyName"], cs["SharedAccessKey"]
        self.host = host or self.hostname
        self.port = port or 443
        self.timeout = timeout
        # ca_path: a file, a list of files, or a function giving the list now (a local hub's CA
        # generations, re-read once when the hub's certificate no longer verifies: rotate-ca --activate)
        self._cas = ca_path
        self._ctx = self._context()

    def _context(self):
        cas = self._cas() if callable(self._cas) else self._cas
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname checked, CERT_REQUIRED, no system roots
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        for path in cas if isinstance(cas, (list, tuple)) else [cas]:
            try:
                ctx.load_verify_locations(cafile=str(path))
            except (OSError, ssl.SSLError):
                raise UsageError("cannot read the hub CA certificate %s" % path) from None
        return ctx

    def _token(self):
        return sas.mint(self.hostname, self._key, int(time.time()) + 3600, policy=self.policy)

    def request(self, method, path, body=None, headers=None, timeout=None):
        try:
            return self._request(method, path, body, headers, timeout)
        except ssl.SSLCertVerificationError:
            if not callable(self._cas):
                raise
            self._ctx = self._context()
            return self._request(method, path, body, headers, timeout)

    def _request(self, method, path, body, headers, timeout):
        sep = "&" if "?" in path else "?"
        conn = _Conn(self.host, self.port, self.hostname, self._ctx, timeout or self.timeout)
        hdrs = {"Authorization": self._token(), "Content-Type": "application/json"}
        hdrs.update(headers or {})
        try:
            conn.request(method, path + sep + API, body=None if body is None else json.dumps(body), headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = None
        if resp.status >= 300:
            msg = (doc.get("ExceptionMessage") or doc.get("Message", "")) if isinstance(doc, dict) \
                else data.decode("utf-8", "replace")[:200]
            raise ServiceError(resp.status, msg)
        if data and doc is None:
            raise ServiceError(resp.status, "the answer is not JSON")
        return doc

    # registry
    def get_device(self, device_id):
        return self.request("GET", "/devices/" + sas.quote(device_id))

    def list_devices(self):
        return self.request("GET", "/devices")

    def put_device(self, device_id, *, auth="sas", status="enabled", primary_key=None, secondary_key=None,
                   primary_thumbprint=None, secondary_thumbprint=None, etag=None):
        doc = {"deviceId": device_id, "status": status,
               "authentication": {"type": auth,
                                  "symmetricKey": {"primaryKey": primary_key, "secondaryKey": secondary_key},
                                  "x509Thumbprint": {"primaryThumbprint": primary_thumbprint,
                                                     "secondaryThumbprint": secondary_thumbprint}}}
        return self.request("PUT", "/devices/" + sas.quote(device_id), doc, {"If-Match": etag} if etag else None)

    def delete_device(self, device_id, etag=None):
        return self.request("DELETE", "/devices/" + sas.quote(device_id), headers={"If-Match": etag or "*"})

    # twins
    def get_twin(self, device_id):
        return self.request("GET", "/twins/" + sas.quote(device_id))

    def update_twin(self, device_id, desired, etag=None, tags=None):
        body = {"properties": {"desired": desired}} if desired is not None else {}
        if tags is not None:
            body["tags"] = tags
        return self.request("PATCH", "/twins/" + sas.quote(device_id), body, {"If-Match": etag} if etag else None)

    # direct methods, C2D, telemetry
    def invoke_method(self, device_id, name, payload=None, timeout=30):
        doc = self.request("POST", "/twins/%s/methods" % sas.quote(device_id),
                           {"methodName": name, "payload": payload, "responseTimeoutInSeconds": timeout},
                           timeout=timeout + 30)
        return doc["status"], doc["payload"]

    def send_c2d(self, device_id, body, properties=None):
        if isinstance(body, bytes):
            body = body.decode()
        return self.request("POST", "/devices/%s/messages/devicebound" % sas.quote(device_id),
                            {"body": body, "properties": properties or {}})

    def telemetry(self, device=None, since=None, wait=0):
        q = {"since": since or 0, "wait": wait}
        if device:
            q["deviceId"] = device
        return self.request("GET", "/messages/events?" + urllib.parse.urlencode(q), timeout=self.timeout + wait)


def local(data_dir, policy="service", *, host=None, port=None, ca=None, connection_string=None):
    """The service client of the local hub running with data folder data_dir.

    It trusts every CA generation of that hub (the host is not what pinning protects, and a
    `rotate-ca --activate` must not cut the hub's own tools off), unless `ca` names one file.
    """
    import pathlib

    from upyhub.hub.pki import PKI
    from upyhub.hub.registry import Registry

    data = pathlib.Path(data_dir)
    serve = data / "serve.json"
    info = json.loads(serve.read_text()) if serve.is_file() else {}
    port = port or info.get("https_port")
    if not port:
        raise HubError("no local hub is running with data folder %s: start it with `upyhub hub serve --data %s` "
                         "(or give --https-port and --host)" % (data, data))
    if not (data / "hub.db").exists():
        raise HubError("no hub in %s: run `upyhub hub init` first" % data)
    pki = PKI(data)
    if not connection_string:
        reg = Registry(data)
        try:
            connection_string = reg.connection_string(pki.hostname, policy)
        finally:
            reg.close()
    host = host or info.get("host")
    if host in (None, "", "0.0.0.0"):
        host = "127.0.0.1"
    return ServiceClient(connection_string, ca or (lambda: [pki.ca_path(g) for g in pki.generations()]),
                         host=host, port=port)
