"""lib/iothub/outbox.py on the unix port: order, acknowledgement, recovery after a reboot, torn and
corrupt records, an older format, a full outbox (both policies) and a full flash, and power cuts
before every flash operation of appends, acknowledgements and segment cleanup, on a plain folder,
littlefs and FAT."""
import json
import shutil

import pytest

from flashimage import CRASH, IMAGE

OB = """
import json, os
from iothub import outbox
LOG = []
def ob(d, **kw):
    return outbox.Outbox(d, kw.pop("max_bytes", 65536), log=LOG.append, **kw)
def drain(o):
    out = []
    while True:
        m = o.next()
        if m is None:
            return out
        out.append(m)
def names(ms):
    return [bytes(m[1]).decode() for m in ms]
"""


def run(run_mp, code, **kw):
    p = run_mp(OB + code, **kw)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_order_acks_and_recovery_after_a_reboot(run_mp, tmp_path):
    d = str(tmp_path / "ob")
    out = run(run_mp, """
o = ob(%r, segment_bytes=200, ack_every=4)
for i in range(20):
    o.append("t/%%d" %% i, b"body %%d" %% i)
sent = drain(o)
for m in sent[:10]:
    o.ack(m[0])
again = drain(o)  # nothing new to send: the rest are in flight
print(json.dumps([names(sent), [bytes(m[2]).decode() for m in sent][:2], o.depth, len(again), sorted(os.listdir(%r))]))
""" % (d, d))
    sent, bodies, depth, again, files = out
    assert sent == ["t/%d" % i for i in range(20)] and bodies == ["body 0", "body 1"]
    assert depth == 10 and again == 0
    assert len(files) < 9  # fully acknowledged segments are gone (20 records of ~20 bytes, 200-byte segments)
    # A reboot: what was not acknowledged comes back in order; acknowledged ones only if their mark
    # was not written yet (fewer than ack_every).
    out = run(run_mp, "o = ob(%r)\nms = drain(o)\nprint(json.dumps([names(ms), o.depth, LOG]))" % d)
    back, depth, log = out
    assert back[-10:] == ["t/%d" % i for i in range(10, 20)]
    assert back == ["t/%d" % i for i in range(20 - len(back), 20)] and len(back) - 10 < 4
    assert depth == len(back) and log == []


def test_rewind_sends_again_from_the_first_unacknowledged(run_mp, tmp_path):
    out = run(run_mp, """
o = ob(%r, segment_bytes=100)
for i in range(6):
    o.append("t/%%d" %% i, b"x")
a = drain(o)
o.ack(a[0][0]); o.ack(a[1][0])
o.rewind()  # a reconnect: 2..5 go again, in order
b = drain(o)
o.ack(b[0][0]); o.ack(a[0][0])  # an old ref again is ignored
print(json.dumps([names(b), o.depth]))
""" % str(tmp_path / "ob"))
    assert out == [["t/2", "t/3", "t/4", "t/5"], 3]


def test_one_at_a_time_across_segments_every_message_is_sent(run_mp, tmp_path):
    # A device whose hub acknowledges each message before the next (the common case, inflight 1 or
    # a slow sender): a full segment is sealed, acknowledged and removed while the cursor still
    # points into it. Every message must still be handed out at once, through many segments.
    out = run(run_mp, """
o = ob(%r, segment_bytes=100, ack_every=1)
got = []
for i in range(60):
    o.append("t/%%d" %% i, b"body")
    m = o.next()
    if m is None:
        break
    got.append(bytes(m[1]).decode())
    o.ack(m[0])
print(json.dumps([got, o.depth, sorted(os.listdir(%r))]))
""" % (str(tmp_path / "ob"), str(tmp_path / "ob")))
    got, depth, files = out
    assert got == ["t/%d" % i for i in range(60)] and depth == 0
    assert len(files) <= 1  # acknowledged segments are removed as they go


def test_torn_tail_corrupt_middle_and_older_format(run_mp, tmp_path):
    d = tmp_path / "ob"
    run(run_mp, """
o = ob(%r, segment_bytes=10000)
for i in range(10):
    o.append("t/%%d" %% i, b"payload %%d" %% i)
print(json.dumps(0))
""" % str(d))
    seg = d / "1.seg"
    data = bytearray(seg.read_bytes())
    data[120] ^= 0xFF  # flash rot inside a record in the middle
    seg.write_bytes(bytes(data) + data[4:20])  # and a torn record at the end (a cut mid-append)
    (d / "7.seg").write_bytes(b"OBX0 an older format")
    out = run(run_mp, """
o = ob(%r)
ms = drain(o)
o.append("t/new", b"n")
print(json.dumps([names(ms) + names(drain(o)), LOG, sorted(os.listdir(%r))]))
""" % (str(d), str(d)))
    got, log, files = out
    assert got[-1] == "t/new" and "t/0" in got and "t/9" in got
    assert len(got) >= 9  # only the record the rot hit is lost; the scan resynchronised after it
    assert got[:-1] == sorted(got[:-1], key=lambda t: int(t[2:]))  # still in order
    assert any("segment 1 has" in x and "damaged byte(s)" in x for x in log)
    assert any("segment 7 is not in this firmware's format: moved aside as 7.seg.old" in x for x in log)
    assert "7.seg.old" in files and "7.seg" not in files
    # appends after a boot go to a new segment, never after a torn end, numbered past every one
    # seen (the moved-aside 7 included): a number is never used twice
    assert "8.seg" in files and "2.seg" not in files


def test_full_drops_the_oldest_or_refuses(run_mp, tmp_path):
    out = run(run_mp, """
o = ob(%r, max_bytes=2000, segment_bytes=400)
for i in range(100):
    o.append("t/%%d" %% i, b"x" * 20)
kept = names(drain(o))
r = ob(%r, max_bytes=2000, segment_bytes=400, full="refuse")
refused = None
n = 0
try:
    for i in range(100):
        r.append("t/%%d" %% i, b"x" * 20)
        n += 1
except outbox.Full as e:
    refused = str(e)
print(json.dumps([kept, o.dropped, o.bytes, n, refused, r.depth, LOG[:1]]))
""" % (str(tmp_path / "a"), str(tmp_path / "b")))
    kept, dropped, size, n, refused, depth, log = out
    assert kept[-1] == "t/99" and len(kept) + dropped == 100 and size <= 2000
    assert kept == ["t/%d" % i for i in range(100 - len(kept), 100)]  # the oldest went
    assert log and log[0].startswith("outbox full: dropped the oldest segment")
    assert refused.startswith("outbox full") and depth == n and 30 < n < 100


def test_full_flash_while_appending(run_mp, tmp_path):
    # littlefs with no room left: drop-oldest makes room (counted) and the outbox stays readable.
    img = tmp_path / "f.img"
    img.write_bytes(b"\xff" * 512 * 48)
    out = run(run_mp, IMAGE + """
mount("VfsLfs2", %r, mkfs=True)
o = ob("/flash/ob", max_bytes=1 << 20, segment_bytes=1024)
errors = []
for i in range(400):
    try:
        o.append("t/%%d" %% i, b"y" * 100)
    except OSError as e:
        errors.append(e.args[0])
o2 = ob("/flash/ob")
ms = names(drain(o2))
print(json.dumps([o.dropped, errors[:3], len(ms), ms[-1:]]))
""" % str(img))
    dropped, errors, n, last = out
    assert dropped > 0 and last == ["t/399"]
    assert n + dropped + len(errors) >= 400 - 10  # nothing else went missing
    assert all(e == 28 for e in errors)


CUT_WORK = """
o = ob(D, segment_bytes=160, ack_every=3)
outbox._hook = _cut
sent = []
for i in range(12):
    o.append("t/%d" % i, b"b%d" % i)
    print("A", i)
    if i % 2:
        sent += drain(o)
        while len(sent) > 1:
            m = sent.pop(0)
            print("P", int(bytes(m[1])[2:]))  # the hub's PUBACK for it has come
            o.ack(m[0])
o.close()
print("DONE")
"""

CUT_BOOT = """
o = ob(D)
print(json.dumps(names(drain(o))))
"""


@pytest.mark.parametrize("fs", ["folder", "VfsLfs2", "VfsFat"])
def test_power_cut_before_every_flash_operation(run_mp, tmp_path, fs):
    # Whatever the cut interrupted: the outbox opens, holds every message whose append returned and
    # was not acknowledged, in order, and gives back acknowledged ones only within ack_every.
    if fs == "folder":
        setup = "D = %r\n"
    else:
        base = tmp_path / "base.img"
        base.write_bytes(b"\xff" * 512 * 128)
        assert run(run_mp, IMAGE + "mount(%r, %r, mkfs=True)\nprint(1)" % (fs, str(base))) == 1
        setup = IMAGE + "mount(" + repr(fs) + ", %r)\nD = '/flash/ob'\n"
    k = 0
    while True:
        k += 1
        assert k < 300
        if fs == "folder":
            where = str(tmp_path / ("cut%d" % k))
        else:
            where = str(tmp_path / ("cut%d.img" % k))
            shutil.copyfile(base, where)
        proc = run_mp(OB + setup % where + CRASH % k + CUT_WORK)
        lines = proc.stdout.split("\n")
        accepted = [int(x.split()[1]) for x in lines if x.startswith("A ")]
        acked = [int(x.split()[1]) for x in lines if x.startswith("P ")]  # (the last maybe cut mid-ack)
        back = [int(t[2:]) for t in run(run_mp, setup % where + CUT_BOOT)]
        what = "%s, cut before flash operation %d: accepted %s, acked %s, back %s" % (fs, k, accepted, acked, back)
        assert back == sorted(back) and len(set(back)) == len(back), what  # in order, once
        assert set(accepted) - set(acked) <= set(back), what  # nothing accepted and unacknowledged lost
        assert len(set(back) & set(acked)) <= 3, what  # acknowledged ones only within ack_every
        assert set(back) <= set(accepted) | {max(accepted, default=-1) + 1}, what  # the one being written, at most
        if "DONE" in proc.stdout:
            assert proc.returncode == 0
            break
        assert proc.returncode == 9, proc.stderr
    assert k > 20  # the run went through appends, marks and cleanups


def test_ram_outbox(run_mp):
    out = run(run_mp, """
from iothub.outboxram import RamOutbox
o = RamOutbox(600, log=LOG.append)
for i in range(20):
    o.append(b"t/%d" % i, b"x" * 20)
a = drain(o)
o.ack(a[0][0])
o.rewind()
r = RamOutbox(200, full="refuse")
try:
    for i in range(20):
        r.append(b"t", b"x" * 20)
except outbox.Full as e:
    print(json.dumps([names(a)[:2], len(a), o.dropped, o.depth, names(drain(o))[:1], str(e)[:11]]))
""")
    first, n, dropped, depth, again, refused = out
    assert n + dropped == 20 and depth == n - 1 and again == [first[1]] and refused == "outbox full"
