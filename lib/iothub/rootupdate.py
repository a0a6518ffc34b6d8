# Root rotation over the air: the `updateRootCerts` direct method (and, for the host tools, the
# `rootCerts` report and expiry list the store itself computes). iothub.roots calls it for the
# session, loaded only while it does:
#   status, body = rootupdate.handle(store, payload)   # on $iothub/methods/POST/updateRootCerts
#   twin patch {"rootCerts": rootupdate.report(store, warn_days)}
#   alert = rootupdate.expiring(store, warn_days)       # list, empty when nothing expires soon
# Payload: {"pem": "<PEM text>", "sha256": "<hex>"} or {"der": "<base64 DER>", "sha256": "<hex>"};
# as JSON text, it is refused unparsed when longer than max_request(store.max_bytes).
import json

from iothub import crypto, x509

METHOD = "updateRootCerts"
ENVELOPE = 256  # bytes of a request besides its PEM or base64: {"pem": "", "sha256": "<64 hex>"}, spacing


def max_request(max_bytes):
    # The longest request that can carry max_bytes of certificates, checked before the request is parsed
    # (a larger one need not fit a board's heap to be refused). JSON escaping at most doubles PEM text
    # (each "\n" is sent as "\\n": one more character a line; any other escape likewise), and base64 of
    # DER is 4/3 of it, which leaves room for its escapes ("\/") too.
    return 2 * max_bytes + ENVELOPE


def _refuse(msg, status=400):
    return status, {"status": "refused" if status < 500 else "error", "message": msg}


def _payload(payload, max_bytes):
    # -> (bytes of the root set, sha256 hex), or raises ValueError with what is wrong with the request.
    if isinstance(payload, (bytes, bytearray, str)):
        limit = max_request(max_bytes)
        if len(payload) > limit:
            raise ValueError("root certificate payload is %d bytes, more than the limit of %d" % (len(payload), limit))
        try:
            payload = json.loads(payload)
        except ValueError:
            raise ValueError("payload is not JSON")
    if not isinstance(payload, dict):
        raise ValueError('payload must be a JSON object: {"pem": ..., "sha256": ...} or {"der": ..., "sha256": ...}')
    pem = payload.get("pem")
    der = payload.get("der")
    if (pem is None) == (der is None):
        raise ValueError('give exactly one of "pem" (PEM text) or "der" (base64 DER)')
    sha = payload.get("sha256")
    if not isinstance(sha, str):
        raise ValueError('"sha256" (hex SHA-256 of the PEM text or of the DER bytes) is required')
    if pem is not None:
        if not isinstance(pem, str):
            raise ValueError('"pem" must be a string of PEM text')
        if len(pem) > max_bytes:
            raise ValueError("root certificate payload is %d bytes, more than the limit of %d" % (len(pem), max_bytes))
        data = pem.encode()
        if not x509.is_pem(data):
            raise ValueError('"pem" does not hold PEM text')
        return data, sha
    if not isinstance(der, str):
        raise ValueError('"der" must be a base64 string')
    if len(der) > (max_bytes * 4) // 3 + 4:
        raise ValueError("root certificate payload is about %d bytes, more than the limit of %d" % (len(der) * 3 // 4, max_bytes))
    data = crypto.b64decode(der, '"der"')
    if x509.is_pem(data):
        raise ValueError('"der" does not decode to DER: send PEM text as "pem"')
    return data, sha


def handle(store, payload):
    # -> (status, body). 200 staged (or already active), 400 refused (active set untouched), 500 flash error.
    try:
        data, sha = _payload(payload, store.max_bytes)
        m = store.stage(data, sha, source="ota")
    except ValueError as e:
        return _refuse(str(e))
    except MemoryError:
        return _refuse("not enough memory to check these certificates")
    except OSError as e:
        from iothub.transport import why

        return _refuse("could not write the staged set to flash: %s" % why(e), 500)
    certs = [{"cn": c["cn"], "sha256": c["sha256"], "notAfter": x509.iso(c["notAfter"])} for c in m["certs"]]
    if m is store.slot("active"):
        return 200, {"status": "active", "seq": m["seq"], "certs": certs, "message": "these roots are already the active set"}
    return 200, {
        "status": "staged",
        "seq": m["seq"],
        "sha256": m["sha256"],
        "certs": certs,
        "message": "staged %d root(s) as seq %d: the next connections use them and keep them once a TLS session "
        "with the hub succeeds; after %d failed attempts they are discarded" % (len(certs), m["seq"], store.tries),
    }


def expiring(store, warn_days=30, now=None):
    # Active roots that expire within warn_days (certstore.Store.expiring).
    return store.expiring(warn_days, now)


def report(store, warn_days=30, now=None):
    # The `rootCerts` reported property (certstore.Store.status).
    return store.status(warn_days, now)
