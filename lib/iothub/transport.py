# What outlives a connection on the TLS side: the one TLS context (made at boot, reused while the
# roots stay the same), the room held for the next session's buffers, and module unloading. The
# handshake itself is iothub.handshake's, loaded only to connect.
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


_cache = [None, None]  # [digest of roots+cert+key, context]; key None: reserved at boot, no roots yet
# Room for the next TLS session's buffers, held between connections where mbed TLS allocates them
# on the Python heap (rp2's bare-metal config: a 16.7 KB record buffer in one piece, 4.4 KB more).
# The sizes are learnt from the first handshake (none: buffers are off-heap, as on ESP32, or not
# known yet); the room is taken back as soon as a session ends and handed to mbed TLS right before
# the next handshake. Without it a heap fragmented by hours of traffic has no 16.7 KB in one
# piece and every reconnect fails with ENOMEM. One block, or two when the heap has no such block
# (the record buffer's and the rest's: freed buffers need not be next to each other). BytesIO because close() frees its
# buffer at once: a bytearray would wait for a collection that a stale pointer on the C stack
# (conservative GC) can defeat.
_room = [[], ()]  # [io.BytesIO blocks held, their sizes]


def _new():
    ctx = _tls.SSLContext(_tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = CERT_REQUIRED
    return ctx


def reserve(room=None):
    # The context is the largest single allocation of a session (mbedtls' RNG state lives in it;
    # 40 KB with Debian's mbedtls on the unix port): take it at boot, while the heap is in one piece.
    # room: the board's TLS_ROOM, sizes of the TLS buffers on ports that put them on the Python heap:
    # held from here on (before anything else can fragment the heap), given to each handshake.
    if _cache[1] is None:
        _cache[1] = _new()
    if room and not _room[1]:
        _room[1] = room
        keep_room()


def keep_room():
    # A TLS session has ended (or a handshake failed, or the roots were just parsed at boot): hold
    # the buffers' room for the next one. One block if the heap has it (the buffers are allocated one
    # after the other and fill it from its start), else one per buffer, each as large as will fit.
    if _room[1] and not _room[0]:
        gc.collect()
        b = _block(sum(_room[1]), True)
        if b is not None:
            _room[0].append(b)
            return
        for n in _room[1]:
            b = _block(n)
            if b is not None:
                _room[0].append(b)


def _block(n, whole=False):
    # A block of n bytes (MicroPython's BytesIO(size) preallocates), else of the largest size down to
    # n // 2 that fits: a record buffer put in a block of the room leaves a hole a little smaller than
    # that block once something small has taken the rest, and the next buffer fits that hole, not a
    # block of the old size (found on the RP2040 model: the room was lost at the second token renewal
    # and the handshake after it failed for want of 16 KB in one piece).
    import io

    try:
        return io.BytesIO(n)
    except MemoryError:
        gc.collect()  # the object made before its buffer could not be: a block that would be in the way
        if whole:
            return None
    lo, hi, best = n // 32, n // 16 - 1, 0  # in 16-byte units, as the heap allocates
    while lo <= hi:
        mid = (lo + hi) // 2
        try:
            io.BytesIO(mid * 16).close()
            best, lo = mid, mid + 1
        except MemoryError:
            hi = mid - 1
        gc.collect()  # the trial's object and buffer: the next trial finds the heap as it was
    try:
        return io.BytesIO(best * 16) if best else None
    except MemoryError:
        return None


def _free_room():
    for r in _room[0]:
        r.close()
    _room[0] = []


def _unload(*names):
    # Drop modules needed only now and then (sas to mint a token, the cert store to pick roots,
    # umqtt to connect): their code is off the heap until the next time. "x" is iothub.x.
    for n in names:
        full = n if "." in n or n == "umqtt" else "iothub." + n
        sys.modules.pop(full, None)
        if "." in full:
            pkg = sys.modules.get(full[:full.rfind(".")])
            if pkg is not None:
                pkg.__dict__.pop(full[full.rfind(".") + 1:], None)


def why(e):
    # iothub.reason.of(e), loaded only while a failure is described; its name alone when the heap has no
    # room for that (a failure must never be what crashes the app).
    try:
        from iothub import reason

        return reason.of(e)
    except ImportError:
        return str(e)
    except MemoryError:
        return type(e).__name__
    finally:
        _unload("reason")
