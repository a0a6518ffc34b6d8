# Telemetry accepted and not yet acknowledged by the hub, in order, on flash: what makes a field
# fleet's data survive power cuts and long outages. The session appends each message before send()
# returns, publishes from here, and acknowledges in PUBACK order.
#
# Layout: <dir>/<n>.seg, append-only segment files numbered upwards (a number is never used twice).
# Each starts with b"OBX1" (the format) and holds records:
#   0xA7 | kind | length (3 bytes, big-endian) | crc32 of kind+length+payload (4) | payload
#   kind 0, data: topic length (2) | topic | body          (the topic carries the message's $.mid)
#   kind 1, ack:  offset (4): every data record of this segment before it was acknowledged
# A record is one append; an ack mark is written every `ack_every` acknowledgements (and on close);
# a segment whose records are all acknowledged is deleted. So each message is one small append plus
# amortized cleanup, never a rewrite of a file (littlefs still commits each flushed append: about
# one block erase, README "Performance").
#
# Power cuts: a torn record fails its CRC and is skipped (the scan resynchronises on the next 0xA7
# with a good CRC); appends after a boot always go to a new segment, never after a torn end. What
# was acknowledged but not yet marked comes back at most once: fewer than `ack_every` messages
# (the session's in-flight window). A segment of another format is moved aside, never read.
# Full: drop the oldest segment (counted) or refuse the new message (Full), by config.
import os

try:
    from binascii import crc32
except ImportError:  # a port built without it
    crc32 = None

HEAD = b"OBX1"
_MAGIC = 0xA7
_HDR = 9
DATA = 0
ACK = 1
MAX_RECORD = 262144 + 16384  # IoT Hub's 256 KB D2C message, its topic and properties

# Tests set this to a function(op, path) called before every flash operation (to cut power there).
_hook = None


def _step(op, path):
    if _hook is not None:
        _hook(op, path)


class Full(Exception):
    # The outbox is full and refuses new messages (outbox_full: "refuse").
    pass


def _crc(data, crc=0):
    if crc32 is None:
        return 0
    return crc32(data, crc) & 0xFFFFFFFF


def _record(kind, payload):
    n = len(payload)
    head = bytearray(_HDR)
    head[0] = _MAGIC
    head[1] = kind
    head[2] = n >> 16
    head[3] = (n >> 8) & 0xFF
    head[4] = n & 0xFF
    c = _crc(payload, _crc(memoryview(head)[1:5]))
    head[5] = c >> 24
    head[6] = (c >> 16) & 0xFF
    head[7] = (c >> 8) & 0xFF
    head[8] = c & 0xFF
    return head


class Outbox:
    def __init__(self, path, max_bytes, segment_bytes=4096, full="drop-oldest", ack_every=8, log=print):
        self.dir = path.rstrip("/")
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.refuse = full == "refuse"
        self.ack_every = ack_every
        self.log = log
        self.dropped = 0  # messages dropped because the outbox was full
        self.depth = 0  # messages not yet acknowledged
        self.bytes = 0  # size of the segment files
        self.room = None  # bytes it could hold at boot (free flash + its segments; None: the port cannot tell)
        self._segs = []  # [number, size, first unacked offset, records pending]
        self._last = 0  # the highest segment number used: numbers are never reused while running, so a
        #                cursor left in a removed segment can never point into a new one of that number
        self._tail = None  # open handle of the last segment (appends), or None: a new one on the next append
        self._rd = [None, None]  # [segment number, handle] for reads
        self._cur = None  # [segment number, offset] of the next record to send
        self._unmarked = 0
        self._buf = bytearray(128)
        self._load()

    # ---- recovery

    def _path(self, n):
        return "%s/%d.seg" % (self.dir, n)

    def _load(self):
        from iothub import outboxscan  # boot only: its code leaves the heap after

        try:
            outboxscan.load(self)
        finally:
            outboxscan = None
            import sys

            sys.modules.pop("iothub.outboxscan", None)
        self._clean()
        self.rewind()

    def _check(self, f, pos, size):
        # The record at pos: (kind, end) when it checks out (CRC computed in small reads: nothing
        # is allocated whole), else None.
        if pos + _HDR > size:
            return None
        f.seek(pos)
        h = f.read(_HDR)
        if h[0] != _MAGIC or h[1] > ACK:
            return None
        n = h[2] << 16 | h[3] << 8 | h[4]
        if n > MAX_RECORD or pos + _HDR + n > size:
            return None
        c = _crc(h[1:5])
        buf = self._buf
        left = n
        while left:
            k = f.readinto(memoryview(buf)[:min(left, len(buf))])
            if not k:
                return None
            c = _crc(memoryview(buf)[:k], c)
            left -= k
        if c != (h[5] << 24 | h[6] << 16 | h[7] << 8 | h[8]):
            return None
        return h[1], pos + _HDR + n

    def _read_at(self, f, pos, size):
        # The record at pos: (kind, end, payload) or None when it does not check out.
        r = self._check(f, pos, size)
        if r is None:
            return None
        f.seek(pos + _HDR)
        return r[0], r[1], f.read(r[1] - pos - _HDR)

    def _clean(self):
        # Delete fully acknowledged segments (the tail is kept while it takes appends).
        while self._segs and self._segs[0][3] == 0 and (len(self._segs) > 1 or self._tail is None):
            n = self._segs[0][0]
            self._drop_reader(n)
            try:
                _step("remove", self._path(n))
                os.remove(self._path(n))
            except OSError as e:
                self.log("outbox: could not remove segment %d (%s)" % (n, e))
                return
            self.bytes -= self._segs[0][1]
            del self._segs[0]

    # ---- appending

    def append(self, topic, body):
        # Record a message; durable (flushed) on return. Raises Full (refuse policy), ValueError
        # (larger than a message can be) or OSError (the flash failed; nothing half-written is kept).
        t = topic.encode() if isinstance(topic, str) else topic
        if isinstance(body, str):
            body = body.encode()
        n = 2 + len(t) + len(body)
        if n > MAX_RECORD:
            raise ValueError("message of %d bytes is larger than IoT Hub accepts" % n)
        need = _HDR + n
        while self.bytes + need > self.max_bytes and self.depth:
            if self.refuse:
                raise Full("outbox full (%d messages, %d bytes): message refused" % (self.depth, self.bytes))
            self._drop_oldest()
        if self.bytes + need > self.max_bytes:
            raise Full("message of %d bytes is larger than the outbox (%d bytes)" % (need, self.max_bytes))
        payload = bytearray(n)
        payload[0] = len(t) >> 8
        payload[1] = len(t) & 0xFF
        payload[2:2 + len(t)] = t
        payload[2 + len(t):] = body
        try:
            self._write(DATA, payload)
        except OSError as e:
            if e.args and e.args[0] == 28 and not self.refuse and self.depth:  # ENOSPC: make room, once
                self._drop_oldest()
                self._write(DATA, payload)
            else:
                raise

    def _write(self, kind, payload):
        if self._tail is None:
            self._new_segment()
        seg = self._segs[-1]
        path = self._path(seg[0])
        head = _record(kind, payload)
        try:
            _step("write", path)
            self._tail.seek(seg[1])
            self._tail.write(head)
            self._tail.write(payload)
            _step("flush", path)
            self._tail.flush()
        except OSError:
            # a part may be on flash: nothing more goes after it (the scan skips the torn end)
            self._seal()
            raise
        if kind == DATA:
            if seg[3] == 0:
                seg[2] = seg[1]
            seg[3] += 1
            self.depth += 1
        seg[1] += _HDR + len(payload)
        self.bytes += _HDR + len(payload)
        if seg[1] >= self.segment_bytes:
            self._seal()

    def _new_segment(self):
        n = self._last + 1
        path = self._path(n)
        _step("open", path)
        f = open(path, "w+b")
        try:
            _step("write", path)
            f.write(HEAD)
            _step("flush", path)
            f.flush()
        except OSError:
            f.close()
            try:
                os.remove(path)
            except OSError:
                pass
            raise
        self._tail = f
        self._last = n
        self._segs.append([n, 4, 4, 0])
        self.bytes += 4

    def _seal(self):
        # The tail takes no more appends (full, or a write failed part-way).
        if self._tail is not None:
            if self._rd[1] is self._tail:
                self._rd = [None, None]
            try:
                self._tail.close()
            except OSError:
                pass
            self._tail = None

    def _drop_oldest(self):
        if len(self._segs) == 1:
            self._seal()
        seg = self._segs[0]
        self.dropped += seg[3]
        self.depth -= seg[3]
        seg[3] = 0
        self.log("outbox full: dropped the oldest segment (%d message(s) dropped so far)" % self.dropped)
        self._clean()

    # ---- sending and acknowledging

    def rewind(self):
        # Send again from the first message not acknowledged (after a reconnect, in order).
        self._cur = [self._segs[0][0], self._segs[0][2]] if self._segs else None

    def _seg(self, n):
        for seg in self._segs:
            if seg[0] == n:
                return seg
        return None

    def next(self):
        # -> (ref, topic bytes, body bytes) of the next message to send, or None.
        if self._cur is None:
            self.rewind()
        while self._cur is not None:
            n, pos = self._cur
            seg = self._seg(n)
            if seg is None or pos >= seg[1]:  # this segment is done (or gone): the next one, if any
                later = [s for s in self._segs if s[0] > n]
                if not later:
                    return None  # appends to this segment or a new one are found from here
                self._cur = [later[0][0], later[0][2]]
                continue
            try:
                r = self._read_at(self._reader(n), pos, seg[1])
            except OSError as e:  # the segment cannot be read any more: its messages are lost, the rest go on
                self.log("outbox: segment %d unreadable (%s): %d message(s) lost" % (n, e, seg[3]))
                self.depth -= seg[3]
                self.dropped += seg[3]
                self._drop_reader(n)
                if seg is self._segs[-1]:
                    self._seal()
                self._segs.remove(seg)
                continue
            if r is None:  # damaged since the scan: resynchronise byte by byte
                self._cur[1] = pos + 1
                continue
            kind, end, payload = r
            self._cur[1] = end
            if kind != DATA or pos < seg[2]:
                continue
            tlen = payload[0] << 8 | payload[1]
            mv = memoryview(payload)  # topic and body without copies
            return (n, pos, end), mv[2:2 + tlen], mv[2 + tlen:]
        return None

    def _reader(self, n):
        if self._rd[0] == n:
            return self._rd[1]
        if self._tail is not None and self._segs[-1][0] == n:
            self._rd = [n, self._tail]
            return self._tail
        self._drop_reader(None)
        self._rd = [n, open(self._path(n), "rb")]
        return self._rd[1]

    def _drop_reader(self, n):
        if self._rd[1] is not None and (n is None or self._rd[0] == n):
            if self._rd[1] is not self._tail:
                self._rd[1].close()
            self._rd = [None, None]

    def ack(self, ref):
        # The hub acknowledged the message at ref (refs come in the order next() gave them).
        n, pos, end = ref
        seg = self._seg(n)
        if seg is None or pos < seg[2] or seg[3] == 0:
            return  # already acknowledged (or dropped)
        seg[2] = end
        seg[3] -= 1
        self.depth -= 1
        self._unmarked += 1
        if seg[3] == 0:
            self._unmarked = 0
        elif self._unmarked >= self.ack_every:
            self._mark(seg)
        if self._segs[0][3] == 0:
            self._clean()

    def _mark(self, seg):
        # Persist "everything before seg[2] is acknowledged" as a small record in that segment.
        self._unmarked = 0
        path = self._path(seg[0])
        try:
            if self._tail is not None and seg is self._segs[-1]:
                self._write(ACK, seg[2].to_bytes(4, "big"))
                return
            _step("open", path)
            with open(path, "ab") as f:
                _step("write", path)
                f.write(_record(ACK, seg[2].to_bytes(4, "big")))
                f.write(seg[2].to_bytes(4, "big"))
                _step("flush", path)
                f.flush()
            seg[1] += _HDR + 4
            self.bytes += _HDR + 4
        except OSError as e:  # the acknowledgement stays in RAM; after a power cut the message comes again
            self.log("outbox: could not record acknowledgements on flash (%s)" % e)

    def close(self):
        for seg in self._segs:
            if seg[3] and seg[2] > 4:
                self._mark(seg)
                break
        self._seal()
        self._drop_reader(None)

