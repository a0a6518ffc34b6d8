# TLS to the hub and the umqtt client on top of it.
# Verification is never optional: CERT_REQUIRED, the pinned roots from flash, and the hub's
# hostname as the name to check, even when the socket goes to a gateway address (127.0.0.1).
# umqtt never picks the TLS name: 1.3.4 calls `ussl.wrap_socket(sock, **ssl_params)` and gets our
# params; 1.4+ calls `ssl.wrap_socket(sock, server_hostname=<connect address>)` on the object we
# hand it as `ssl`, which ignores that name and uses ours.
import gc
import sys

try:
    import tls as _tls  # built into 1.22+ ports; its load_verify_locations takes data positionally
    _POSITIONAL = True
except ImportError:
    import ssl as _tls
    _POSITIONAL = False

CERT_REQUIRED = _tls.CERT_REQUIRED
TIMEOUT_S = 20  # TLS handshake, and any read that stalls mid-packet
_OK_VERSIONS = ("TLSv1.2", "TLSv1.3")


class TLSError(Exception):
    # The hub could not be verified (or offered old TLS): nothing was sent to it.
    pass


_cache = [None, None]  # [digest of roots+cert+key, context]; key None: reserved at boot, no roots yet


def _new():
    ctx = _tls.SSLContext(_tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = CERT_REQUIRED
    return ctx


def reserve():
    # The context is the largest single allocation of a session (mbedtls' RNG state lives in it;
    # 40 KB with Debian's mbedtls on the unix port): take it at boot, while the heap is in one piece.
    if _cache[1] is None:
        _cache[1] = _new()


def context(cadata, cert=None, key=None):
    # One context, reused while the roots and client certificate stay the same: a reconnect must
    # not need a new contiguous block from a heap that has fragmented since boot.
    import hashlib

    h = hashlib.sha256(cadata)
    if cert:
        h.update(cert)
        h.update(key)
    k = h.digest()  # 32 bytes instead of a copy of the roots kept around
    if _cache[0] == k:
        return _cache[1]
    ctx = _cache[1] if _cache[0] is None else None
    _cache[0] = _cache[1] = None
    if ctx is None:
        gc.collect()
        ctx = _new()
    for der in _ders(cadata):  # each call adds one root to the context
        if _POSITIONAL:
            ctx.load_verify_locations(der)
        else:
            ctx.load_verify_locations(cadata=der)
    if cert:
        ctx.load_cert_chain(cert, key)
    _cache[0] = k
    _cache[1] = ctx
    return ctx


def _ders(cadata):
    # The roots as DER, one certificate at a time. Boards' bare-metal mbedtls (rp2) has no PEM
    # parser, and a DER buffer holds one certificate: so a PEM bundle is split and decoded here.
    if cadata[:1] == b"0":  # already DER (a SEQUENCE)
        yield cadata
        return
    import binascii

    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    i = cadata.find(begin)
    if i < 0:
        raise ValueError("no certificate in the roots (neither DER nor PEM)")
    while i >= 0:
        j = cadata.find(end, i)
        if j < 0:
            raise ValueError("truncated PEM certificate in the roots")
        yield binascii.a2b_base64(bytes(b for b in cadata[i + len(begin):j] if b > 32))
        i = cadata.find(begin, j)


def wrap_socket(sock, server_side=False, key=None, cert=None, cert_reqs=None, cadata=None,
                server_hostname=None, do_handshake=True):
    # ussl's signature, so umqtt 1.3.4 can call it as `ussl.wrap_socket`; refuses to go unverified.
    # cadata may be a function: the roots are then fetched once TCP is up (the cert store counts
    # each hand-out of a staged set as one trial, so a dead network must not use trials up).
    if callable(cadata):
        try:
            cadata = cadata()
        except Exception as e:
            sock.close()
            raise TLSError("no usable root certificates: %s" % e)
    if server_side or cert_reqs != CERT_REQUIRED or not cadata or not server_hostname:
        sock.close()
        raise TLSError("refusing TLS without CERT_REQUIRED, pinned roots and a hostname")
    try:
        ctx = context(cadata, cert, key)
    except Exception as e:
        sock.close()
        raise TLSError("bad roots or client certificate: %s" % e)
    try:
        sock.settimeout(TIMEOUT_S)
        # umqtt writes a packet in several small pieces: without this, Nagle holds each next piece
        # until the hub's delayed ACK (~40 ms a message).
        sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    except (AttributeError, OSError):
        pass
    try:
        s = ctx.wrap_socket(sock, server_hostname=server_hostname)
    except Exception as e:
        sock.close()
        raise TLSError("handshake with %s failed: %s" % (server_hostname, e))
    try:
        version = s.cipher()[1]
    except AttributeError:  # ports before cipher() cannot tell; mbedtls' own minimum applies
        version = None
    if version is not None and version not in _OK_VERSIONS:
        s.close()
        raise TLSError("%s offered %s only; TLS 1.2 is the minimum" % (server_hostname, version))
    return s


class Wrapper:
    # What umqtt 1.4+ takes as `ssl`: only wrap_socket is ever called on it.
    def __init__(self, params):
        self.params = params

    def wrap_socket(self, sock, server_hostname=None, **kw):
        return wrap_socket(sock, **self.params)


def install_ussl():
    # umqtt 1.3.4 does `import ussl`; give it this module only where no real ussl exists.
    if "ussl" in sys.modules:
        return
    try:
        import ussl  # noqa: F401  (an old port's own: it takes the same params)
    except ImportError:
        sys.modules["ussl"] = sys.modules[__name__]


def params(hostname, cadata, cert=None, key=None):
    p = {"server_hostname": hostname, "cert_reqs": CERT_REQUIRED, "cadata": cadata}
    if cert:
        p["cert"] = cert
        p["key"] = key
    return p


def client(client_id, address, port, user, password, keepalive, tls_params):
    from umqtt.simple import MQTTClient

    install_ussl()
    if callable(tls_params.get("cadata")) and sys.modules.get("ussl") is not sys.modules[__name__]:
        tls_params["cadata"] = tls_params["cadata"]()  # a port's own ussl wants the bytes
    w = Wrapper(tls_params)
    try:  # 1.3.4 (and releases that accept ssl_params again)
        return MQTTClient(client_id, address, port, user, password, keepalive, ssl=w, ssl_params=tls_params)
    except TypeError:  # 1.4: `ssl` is an SSLContext-like object
        return MQTTClient(client_id, address, port, user, password, keepalive, ssl=w)


class Roots:
    # The root certificate store (lib/iothub/certstore.py), loaded only when it has work to do:
    # with its X.509 reader it is ~15-20 KB of code a running session does not need between
    # handshakes. Same calls as certstore.Store: roots_for_connect() -> (data, slot),
    # tls_ok(slot), tls_failed(slot). The outcome of the active set is only a count the store
    # keeps in RAM (failures in a row, which send it to the fallback set); that count lives
    # here, so the store is loaded after a handshake only for a staged or fallback set.
    def __init__(self, certs_dir):
        self.dir = certs_dir
        self._failures = 0
        self.changed = False  # a staged/fallback set was promoted or dropped: worth reporting

    def use(self, fn):
        # fn(store) with the store loaded (handshakes, root rotation, status reports), then unloaded
        # (also after a MemoryError half-way through an import).
        s = None
        try:
            from iothub import certstore

            s = certstore.Store(self.dir)
            s._active_failures = self._failures
            return fn(s)
        finally:
            if s is not None:
                self._failures = s._active_failures
            s = certstore = None
            _unload("certstore", "x509", "rootupdate")
            gc.collect()

    def _call(self, name, *args):
        return self.use(lambda s: getattr(s, name)(*args))

    def roots_for_connect(self):
        return self._call("roots_for_connect")

    def tls_ok(self, slot):
        if slot == "active":
            self._failures = 0
        else:
            self.changed = True
            self._call("tls_ok", slot)

    def tls_failed(self, slot):
        if slot == "active":
            self._failures += 1
        else:
            self.changed = True
            self._call("tls_failed", slot)


def _unload(*names):
    import iothub

    for n in names:
        iothub.__dict__.pop(n, None)
        sys.modules.pop("iothub." + n, None)


def roots_source(root, certs_dir):
    # The root store: certstore.Store (roots_for_connect/tls_ok/tls_failed for the session, and
    # everything rootupdate needs).
    from iothub import certstore

    return certstore.Store(root.rstrip("/") + "/" + certs_dir)


def lazy_roots(root, certs_dir):
    # The same session calls from a store loaded only when it has work to do (see Roots): what
    # the firmware uses, to keep the cert store's code off the heap between handshakes.
    return Roots(root.rstrip("/") + "/" + certs_dir)
