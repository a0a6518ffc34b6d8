# Recovery of the outbox at boot (iothub.outbox): which segments exist, which of their records are
# whole and not yet acknowledged. Loaded once, then unloaded.
import os

from iothub.outbox import _HDR, ACK, DATA, HEAD, _step


def load(ob):
    try:
        names = os.listdir(ob.dir)
    except OSError:
        _step("mkdir", ob.dir)
        os.mkdir(ob.dir)
        names = []
    nums = []
    for name in names:
        if name.endswith(".seg") and name[:-4].isdigit():
            nums.append(int(name[:-4]))
    nums.sort()
    if nums:
        ob._last = nums[-1]
    for n in nums:
        seg = _scan(ob, n)
        if seg is not None:
            ob._segs.append(seg)
            ob.depth += seg[3]
            ob.bytes += seg[1]
    free = _free(ob.dir)
    ob.room = None if free is None else free + ob.bytes  # what it can grow to: the flash's free space + its own


def _free(path):
    # Bytes free on the filesystem that holds path; None where the port cannot tell.
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st[0] * st[3]


def _scan(ob, n):
    # -> [n, size, first unacked offset, pending records], or None (moved aside or unreadable).
    path = ob._path(n)
    try:
        f = open(path, "rb")
    except OSError as e:
        ob.log("outbox: segment %d unreadable (%s): skipped" % (n, e))
        return None
    try:
        size = f.seek(0, 2)
        f.seek(0)
        head = f.read(4)
        if head != HEAD and HEAD.startswith(head):  # cut while it was being created: holds nothing
            f.close()
            f = None
            _step("remove", path)
            os.remove(path)
            return None
        if head != HEAD:
            f.close()
            f = None
            ob.log("outbox: segment %d is not in this firmware's format: moved aside as %d.seg.old" % (n, n))
            try:
                _step("rename", path)
                os.rename(path, path + ".old")
            except OSError:
                pass
            return None
        acked = 4
        recs = []  # offsets of data records
        pos = 4
        bad = 0
        while pos < size:
            r = ob._check(f, pos, size)
            if r is None:  # torn or corrupt: look for the next record that checks out
                bad += 1
                pos += 1
                continue
            kind, end = r
            if kind == DATA:
                recs.append(pos)
            elif kind == ACK and end - pos == _HDR + 4:
                f.seek(pos + _HDR)
                acked = max(acked, int.from_bytes(f.read(4), "big"))
            pos = end
        if bad:
            ob.log("outbox: segment %d has %d damaged byte(s) (a torn write or flash rot): skipped them, "
                   "kept %d message(s)" % (n, bad, len(recs)))
        pending = [p for p in recs if p >= acked]
        return [n, size, pending[0] if pending else size, len(pending)]
    finally:
        if f is not None:
            f.close()
