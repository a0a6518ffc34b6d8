# TLS to the hub. Verification is never optional: CERT_REQUIRED, the pinned roots from flash, and
# the hub's hostname as the name to check, even when the socket goes to a gateway address
# (127.0.0.1). umqtt never picks the TLS name (iothub.mqtt hands it our wrapper).
import gc
import sys

try:
    import tls as _tls  # built into 1.22+ ports; its load_verify_locations takes data positionally
    _POSITIONAL = True
except ImportError:
    import ssl as _tls
    _POSITIONAL = False

CERT_REQUIRED = _tls.CERT_REQUIRED
TIMEOUT_S = 20  # default io_timeout: the handshake, CONNECT/CONNACK, and any packet that stalls mid-way
_OK_VERSIONS = ("TLSv1.2", "TLSv1.3")


class TLSError(Exception):
    # No TLS session with the hub: nothing was sent to it. .kind says whose fault it is:
    #   "verify"  the server is not the hub under these roots (or the roots do not load): the
    #             root set's fault, counted against it
    #   "memory"  the heap could not give the handshake what it needs: nobody's fault but the
    #             heap's (counted towards a clean reset, never against the roots)
    #   "server"  no answer, not TLS, TLS below 1.2: the server's or the network's fault
    def __init__(self, msg, kind):
        super().__init__(msg)
        self.kind = kind


def _kind(e):
    if isinstance(e, MemoryError) or isinstance(e, OSError) and e.args and e.args[0] in (12, -0x7F00):
        return "memory"  # ENOMEM: mbed TLS' MBEDTLS_ERR_SSL_ALLOC_FAILED as MicroPython raises it
    if isinstance(e, ValueError) or isinstance(e, OSError) and e.args and e.args[0] == -0x2700:
        return "verify"  # the verify report (ValueError), or MBEDTLS_ERR_X509_CERT_VERIFY_FAILED
    return "server"


_cache = [None, None]  # [digest of roots+cert+key, context]; key None: reserved at boot, no roots yet
# Room for the next TLS session's buffers, held between connections where mbed TLS allocates them
# on the Python heap (rp2's bare-metal config: a 16.7 KB record buffer in one piece, 4.4 KB more).
# The sizes are learnt from the first handshake (none: buffers are off-heap, as on ESP32, or not
# known yet); the room is taken back as soon as a session ends and handed to mbed TLS right before
# the next handshake. Without it a heap fragmented by hours of traffic has no 16.7 KB in one
# piece and every reconnect fails with ENOMEM. Two blocks (the record buffer's and the rest's):
# the freed buffers need not have been next to each other. BytesIO because close() frees its
# buffer at once: a bytearray would wait for a collection that a stale pointer on the C stack
# (conservative GC) can defeat.
_BIG = 16384 + 1024
_room = [[], ()]  # [io.BytesIO blocks held, their sizes]


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
                server_hostname=None, do_handshake=True, timeout=TIMEOUT_S):
    # ussl's signature, so umqtt 1.3.4 can call it as `ussl.wrap_socket`; refuses to go unverified.
    if server_side or cert_reqs != CERT_REQUIRED or not cadata or not server_hostname:
        sock.close()
        raise TLSError("refusing TLS without CERT_REQUIRED, pinned roots and a hostname", "verify")
    try:
        ctx = context(cadata, cert, key)
    except Exception as e:
        sock.close()
        k = _kind(e)
        raise TLSError("bad roots or client certificate: %s" % e if k != "memory" else
                       "not enough memory for the TLS context: %r" % e, "memory" if k == "memory" else "verify")
    sock.settimeout(timeout)  # the handshake, CONNECT and CONNACK; iothub.wire takes over after
    try:
        # umqtt writes CONNECT in several small pieces: without this, Nagle holds each next piece
        # until the hub's delayed ACK (~40 ms).
        sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
    except (AttributeError, OSError):
        pass
    _free_room()
    gc.collect()
    free = gc.mem_free()
    try:
        s = ctx.wrap_socket(sock, server_hostname=server_hostname)
        held = free - gc.mem_free()
        if held > 8192 and not _room[1]:
            _room[1] = (_BIG, held - _BIG + 1024) if held > _BIG else (held + 512,)
    except Exception as e:
        sock.close()
        keep_room()
        k = _kind(e)
        if k == "memory":
            raise TLSError("not enough memory for the TLS handshake with %s" % server_hostname, k)
        raise TLSError("handshake with %s failed: %s" % (server_hostname, why(e)), k)
    try:
        version = s.cipher()[1]
    except AttributeError:  # ports before cipher() cannot tell; mbedtls' own minimum applies
        version = None
    if version is not None and version not in _OK_VERSIONS:
        s.close()
        raise TLSError("%s offered %s only; TLS 1.2 is the minimum" % (server_hostname, version), "server")
    return s


def keep_room():
    # A TLS session has ended (or a handshake failed): hold the buffers' room for the next one.
    if _room[1] and not _room[0]:
        import io

        gc.collect()
        for n in _room[1]:
            try:
                _room[0].append(io.BytesIO(n))  # preallocated: MicroPython's BytesIO(size)
            except MemoryError:
                pass


def _free_room():
    for r in _room[0]:
        r.close()
    _room[0] = []


def _unload(*names):
    # Drop modules needed only now and then (sas to mint a token, the cert store to pick roots,
    # umqtt to connect): their code is off the heap until the next time. "x" is iothub.x.
    for n in names:
        full = n if "." in n else "iothub." + n
        sys.modules.pop(full, None)
        pkg = sys.modules.get(full[:full.rfind(".")])
        if pkg is not None:
            pkg.__dict__.pop(full[full.rfind(".") + 1:], None)


def why(e):
    # iothub.reason.of(e), loaded only while a failure is described.
    try:
        from iothub import reason

        return reason.of(e)
    except ImportError:
        return str(e)
    finally:
        _unload("reason")


def params(hostname, cadata, cert=None, key=None, timeout=TIMEOUT_S):
    # What wrap_socket takes (umqtt 1.3.4 passes them on as **ssl_params).
    p = {"server_hostname": hostname, "cert_reqs": CERT_REQUIRED, "cadata": cadata, "timeout": timeout}
    if cert:
        p["cert"] = cert
        p["key"] = key
    return p
