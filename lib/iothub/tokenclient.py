# The token-service pattern (Azure IoT security guide): the device holds no hub key. A service of the
# solution's own authenticates it by its own scheme and hands it a short-lived SAS token for
# {hub}/devices/{id}, signed with a shared access policy that has DeviceConnect. The scheme here is
# upyhub's token service (upyhub hub token-service): a per-device secret (secrets.json token_secret,
# not a hub key) answers a single-use challenge:
#   GET  /challenge?deviceId=<id>               -> {"nonce": "..."}
#   POST /token {"deviceId", "nonce", "mac"}    -> {"sasToken": "SharedAccessSignature ...", "expiresOn": s}
#   mac = base64(HMAC-SHA256(base64decode(token_secret), deviceId + "\n" + nonce))
# HTTPS with the same rules as the hub: pinned roots, the service's hostname verified, TLS 1.2+.
# Loaded only to fetch a token (before each connection and renewal).
import json
import socket

from iothub import topics, transport
from iothub.connect import Failure, why

MAX_ANSWER = 4096


def fetch(cfg, secret, cadata, log=print):
    # -> (token, expiry). Raises connect.Failure.
    ts = cfg["token_service"]
    dev = cfg["device_id"]
    try:
        doc = _call(ts, cadata, cfg["io_timeout"], "GET", "/challenge?deviceId=" + topics.quote(dev), None)
        nonce = doc.get("nonce") if isinstance(doc, dict) else None
        if not isinstance(nonce, str) or not 8 <= len(nonce) <= 256:
            raise Failure("wait", "token service: no challenge in its answer")
        from iothub.crypto import b64decode, b64encode, hmac_sha256

        mac = b64encode(hmac_sha256(b64decode(secret, "token_secret"), (dev + "\n" + nonce).encode()))
        doc = _call(ts, cadata, cfg["io_timeout"], "POST", "/token",
                    json.dumps({"deviceId": dev, "nonce": nonce, "mac": mac}))
    except OSError as e:
        raise Failure("wait", "token service unreachable: %s" % why(e))
    finally:
        transport._unload("crypto")
    tok = doc.get("sasToken") if isinstance(doc, dict) else None
    exp = doc.get("expiresOn") if isinstance(doc, dict) else None
    if not isinstance(tok, str) or not tok.startswith("SharedAccessSignature ") or not isinstance(exp, int):
        raise Failure("wait", "token service: its answer holds no token")
    return tok, exp


def _call(ts, cadata, timeout, method, path, body):
    # One HTTPS request; -> the JSON answer (2xx), or Failure with the service's reason.
    from iothub import handshake

    host, port = ts["host"], ts.get("port", 443)
    s = socket.socket()
    try:
        s.settimeout(timeout)
        s.connect(socket.getaddrinfo(ts.get("gateway") or host, port)[0][-1])
        try:
            t = handshake.wrap_socket(s, cert_reqs=transport.CERT_REQUIRED, cadata=cadata, server_hostname=host,
                                      timeout=timeout)
        except handshake.TLSError as e:
            raise Failure("memory" if e.kind == "memory" else "wait", "token service TLS refused: %s" % e)
        data = (body or "").encode()
        t.write(("%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                 "Connection: close\r\n\r\n" % (method, path, host, len(data))).encode() + data)
        raw = b""
        while len(raw) <= MAX_ANSWER:
            chunk = t.read(512)
            if not chunk:
                break
            raw += chunk
        t.close()
    finally:
        s.close()
        handshake = None
        transport._unload("handshake")
        transport.keep_room()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = head[9:12]
    if len(raw) > MAX_ANSWER or not head.startswith(b"HTTP/1.") or not status.isdigit():
        raise Failure("wait", "token service: not an HTTP answer it should give")
    try:
        doc = json.loads(payload) if payload else None
    except ValueError:
        doc = None
    if not 200 <= int(status) < 300:
        reason = doc.get("message") if isinstance(doc, dict) else None
        raise Failure("wait", "token service refused: HTTP %s%s" % (status.decode(), (" (%s)" % reason) if reason else ""))
    return doc
