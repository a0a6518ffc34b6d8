# MQTT on the wire once connected (iothub.mqtt did the CONNECT): packets are written whole and
# read with their sizes checked before anything is allocated, on a socket that never blocks.
#
# Socket rules that hold on every port (lwIP boards included, where setblocking(True) clears a
# timeout): until the CONNACK the socket has the timeout (config io_timeout); from here on it
# is non-blocking and every wait is a poll() on the plain socket with a deadline, so no read or
# write can take longer than `timeout_ms`. umqtt's wait_msg(), which calls setblocking(True), is
# never used.
import gc
import select
import time

from iothub import topics, transport

PUBLISH = 0x30
PUBACK = 0x40
SUBACK = 0x90
PINGRESP = 0xD0
MAX_TOPIC = 10240  # IoT Hub's topics: names plus up to 8 KB of properties
_SCRATCH = 256


class Closed(OSError):
    # The hub ended the connection (EOF), or sent something that is not MQTT from a server.
    pass


def _close(s):
    try:
        s.close()
    except Exception:
        pass


def _size(n, out, i):
    # MQTT remaining length into out[i:]; returns the index after it.
    while True:
        b = n & 0x7F
        n >>= 7
        out[i] = b | (0x80 if n else 0)
        i += 1
        if not n:
            return i


class Conn:
    def __init__(self, sock, raw, timeout_ms):
        self.s = sock
        self.raw = raw
        self.timeout_ms = timeout_ms
        raw.settimeout(0)  # non-blocking from here on: every wait is a poll with a deadline
        self._p = select.poll()
        self._p.register(raw, select.POLLIN)
        self._buf = bytearray(_SCRATCH)
        self._mv = memoryview(self._buf)
        self.pid = 0

    def next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    # ---- writing

    def _wait(self, event, deadline, what):
        left = time.ticks_diff(deadline, time.ticks_ms())
        if left <= 0:
            raise OSError(110, what)
        if event != select.POLLIN:
            self._p.modify(self.raw, event)
        try:
            ev = self._p.poll(left)
        finally:
            if event != select.POLLIN:
                self._p.modify(self.raw, select.POLLIN)
        if ev and ev[0][1] & (select.POLLHUP | select.POLLERR) and not ev[0][1] & event:
            raise Closed("the hub closed the connection")

    def write(self, data):
        mv = memoryview(data)
        n = len(mv)
        off = 0
        deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        while off < n:
            k = self.s.write(mv[off:])
            if k is None:  # the socket is full (or TLS wants to read first): wait for room
                self._wait(select.POLLOUT, deadline, "the hub stopped reading")
                continue
            off += k

    def publish(self, topic, body, qos=0, pid=0, dup=False):
        t = topic.encode() if isinstance(topic, str) else topic
        if isinstance(body, str):
            body = body.encode()
        n = 2 + len(t) + (2 if qos else 0) + len(body)
        small = len(body) <= 512
        head = bytearray(5 + 2 + len(t) + 2 + (len(body) if small else 0))
        head[0] = PUBLISH | (8 if dup else 0) | (qos << 1)
        i = _size(n, head, 1)
        head[i] = len(t) >> 8
        head[i + 1] = len(t) & 0xFF
        i += 2
        head[i:i + len(t)] = t
        i += len(t)
        if qos:
            head[i] = pid >> 8
            head[i + 1] = pid & 0xFF
            i += 2
        if small:
            head[i:i + len(body)] = body
            i += len(body)
        self.write(memoryview(head)[:i])
        if not small:
            self.write(body)

    def puback(self, pid):
        self.write(bytes((PUBACK, 2, pid >> 8, pid & 0xFF)))

    def ping(self):
        self.write(b"\xc0\x00")

    def close(self, graceful=False):
        if graceful:
            try:
                self.write(b"\xe0\x00")
            except Exception:
                pass
        _close(self.s)
        _close(self.raw)
        self.s = self.raw = None
        transport.keep_room()

    # ---- reading

    def _fill(self, mv, deadline):
        # Read exactly len(mv) bytes before the deadline (the rest of a packet that has begun).
        got = 0
        n = len(mv)
        while got < n:
            k = self.s.readinto(mv[got:])
            if k is None:
                self._wait(select.POLLIN, deadline, "the hub stalled in the middle of a packet")
                continue
            if k == 0:
                raise Closed("the hub closed the connection")
            got += k

    def _byte(self, deadline):
        self._fill(self._mv[:1], deadline)
        return self._buf[0]

    def _skip(self, n, deadline):
        while n > 0:
            k = n if n < _SCRATCH else _SCRATCH
            self._fill(self._mv[:k], deadline)
            n -= k

    def poll(self, wait_ms):
        # The first byte of the next packet, or None when nothing came within wait_ms. Data TLS
        # has already decrypted is taken first: the plain socket knows nothing of it.
        deadline = time.ticks_add(time.ticks_ms(), wait_ms)
        while True:
            k = self.s.readinto(self._mv[:1])
            if k == 0:
                raise Closed("the hub closed the connection")
            if k:
                return self._buf[0]
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                return None
            ev = self._p.poll(left)
            if ev and ev[0][1] & (select.POLLHUP | select.POLLERR) and not ev[0][1] & select.POLLIN:
                raise Closed("the hub closed the connection")

    def read(self, first, device_id):
        # The packet that starts with `first`, read whole within the timeout. Bodies larger than
        # IoT Hub sends on their topic (topics.limit), or than the heap can hold, are skipped
        # without being allocated. Returns
        #   (PUBLISH, topic, pid, body, size, why)   body is a bytearray, or None when skipped
        #                                            (why: "too large" or "no memory"); pid 0 for QoS 0
        #   (PUBACK, pid) | (SUBACK, pid, return codes) | (PINGRESP,)
        # Anything else from a server is a protocol error (Closed).
        deadline = time.ticks_add(time.ticks_ms(), self.timeout_ms)
        n = 0
        sh = 0
        while True:
            b = self._byte(deadline)
            n |= (b & 0x7F) << sh
            if not b & 0x80:
                break
            sh += 7
            if sh > 21:
                raise Closed("the hub sent a malformed packet length")
        kind = first & 0xF0
        if kind == PUBLISH:
            return self._publish(first, n, device_id, deadline)
        if kind in (PUBACK, SUBACK, PINGRESP) and n <= 260:
            self._fill(self._mv[:n], deadline)
            if kind == PINGRESP:
                return (PINGRESP,)
            if n < 2:
                raise Closed("the hub sent a short packet")
            pid = self._buf[0] << 8 | self._buf[1]
            if kind == PUBACK:
                return (PUBACK, pid)
            return (SUBACK, pid, bytes(self._mv[2:n]))
        raise Closed("the hub sent an unexpected packet (type %d, %d bytes)" % (first >> 4, n))

    def _publish(self, first, n, device_id, deadline):
        qos = (first >> 1) & 3
        self._fill(self._mv[:2], deadline)
        tlen = self._buf[0] << 8 | self._buf[1]
        rest = n - 2 - tlen - (2 if qos else 0)
        if qos > 1 or rest < 0:
            raise Closed("the hub sent a malformed PUBLISH")
        if tlen > MAX_TOPIC:
            topic = b""
            self._skip(tlen, deadline)
        else:
            topic = bytearray(tlen)
            self._fill(memoryview(topic), deadline)
        pid = 0
        if qos:
            self._fill(self._mv[:2], deadline)
            pid = self._buf[0] << 8 | self._buf[1]
        why = None
        body = None
        if not topic or rest > topics.limit(topic, device_id):
            why = "too large"
        else:
            body = _alloc(rest)
            if body is None:
                why = "no memory"
        if body is None:
            self._skip(rest, deadline)
        else:
            self._fill(memoryview(body), deadline)
        return (PUBLISH, topic, pid, body, rest, why)


def _alloc(n):
    # A buffer for a body, or None when the heap cannot give n bytes in one piece.
    try:
        return bytearray(n)
    except MemoryError:
        pass
    gc.collect()
    try:
        return bytearray(n)
    except MemoryError:
        return None
