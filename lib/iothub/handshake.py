# TLS to the hub, loaded only to connect. Verification is never optional: CERT_REQUIRED, the pinned
# roots from flash, and the hub's hostname as the name to check, even when the socket goes to a
# gateway address (127.0.0.1). umqtt never picks the TLS name (iothub.mqtt hands it our wrapper).
import gc

from iothub import transport
from iothub.transport import CERT_REQUIRED, TIMEOUT_S, _cache, _room, why

_OK_VERSIONS = ("TLSv1.2", "TLSv1.3")
_BIG = 16384 + 1024  # mbed TLS' record buffer (16 KB of content) and some: one block of the room


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
        ctx = transport._new()
    parsed = 0
    for der in _ders(cadata):  # each call adds one root to the context
        free = gc.mem_free()
        if transport._POSITIONAL:
            ctx.load_verify_locations(der)
        else:
            ctx.load_verify_locations(cadata=der)
        parsed += free - gc.mem_free() - len(der)
    if parsed > 0 and not _room[1]:
        # the parsed roots landed on the Python heap: so will the session's buffers (rp2's memory
        # model). Until the first handshake says exactly, hold room for the usual sizes.
        _room[1] = (_BIG, 6144)
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
    transport._free_room()
    gc.collect()
    free = gc.mem_free()
    try:
        s = ctx.wrap_socket(sock, server_hostname=server_hostname)
        held = free - gc.mem_free()
        if held > 8192:  # the buffers are on the Python heap: hold that much room between sessions
            _room[1] = (_BIG, held - _BIG + 1024) if held > _BIG else (held + 512,)
    except Exception as e:
        sock.close()
        transport.keep_room()
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



def params(hostname, cadata, cert=None, key=None, timeout=TIMEOUT_S):
    # What wrap_socket takes (umqtt 1.3.4 passes them on as **ssl_params).
    p = {"server_hostname": hostname, "cert_reqs": CERT_REQUIRED, "cadata": cadata, "timeout": timeout}
    if cert:
        p["cert"] = cert
        p["key"] = key
    return p
