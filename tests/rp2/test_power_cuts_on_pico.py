"""Power cuts on the chip's own flash driver: the rp2 port's littlefs on the Pico's flash (erase and program done by
its ROM functions), the power cut at one flash operation (left undone, or half done), for every operation of a
run, then the board powered on again. tests/lib does the same on the unix port, cutting before each filesystem
call; here the cut falls between and inside the flash writes littlefs itself makes.

The outbox: every message whose append returned and was not acknowledged comes back, in order, once;
acknowledged ones come back only within ack_every. The root store: it always opens with a set of roots the
board can connect with (never none), and the set it ends with is the old one or the new one."""
import json
import shutil

import pytest

import time

from picoboard import SET_CLOCK, PicoBoard
from test_outbox import CUT_BOOT, CUT_WORK, OB

pytestmark = pytest.mark.slow

NO_HOOK = "_cut = None\n"  # tests/lib's flash-operation hook: here the emulator cuts the power instead


def fresh_base(tmp_path):
    """A flash image with littlefs made by the rp2 port's _boot.py, as a new board has after its first boot."""
    base = tmp_path / "base.img"
    with PicoBoard(base, network=False, flash_timing=False) as b:
        b.run("import os\nos.mkdir('/ob')")
    return base


def cut_runs(tmp_path, base, work, check, min_ops, limit=400):
    """For k = 1, 2, ...: a board from `base`, the power cut at its k-th flash operation while `work` runs, then
    powered on and `check` run; yields (k, torn, what work printed, what check printed) until a run of work
    finishes before its k-th operation."""
    for k in range(1, limit):
        for torn in (False, True):
            image = tmp_path / "cut.img"
            shutil.copyfile(base, image)
            with PicoBoard(image, network=False, flash_timing=False) as b:
                b.pico.cut(after=k, torn=torn)
                out, err, cut = b.exec_until_cut(work)
                if not cut:
                    assert not err, err
                    assert k > min_ops  # the run went through the flash operations it is known to make
                    return
                b.power_on()
                yield k, torn, out, b.run(check)
    raise AssertionError("the work never finished")


def test_outbox_power_cut_at_every_flash_operation(tmp_path, pico_image):
    base = fresh_base(tmp_path)
    setup = OB + NO_HOOK + "D = '/ob'\n"
    for k, torn, out, back in cut_runs(tmp_path, base, setup + CUT_WORK, setup + CUT_BOOT, 20):
        lines = out.split("\n")
        accepted = [int(x.split()[1]) for x in lines if x.startswith("A ")]
        acked = [int(x.split()[1]) for x in lines if x.startswith("P ")]
        back = [int(t[2:]) for t in json.loads(back.strip().splitlines()[-1])]
        what = "cut at flash operation %d (%s): accepted %s, acked %s, back %s" % (
            k, "torn" if torn else "not done", accepted, acked, back)
        assert back == sorted(back) and len(set(back)) == len(back), what  # in order, once
        assert set(accepted) - set(acked) <= set(back), what  # nothing accepted and unacknowledged lost
        assert len(set(back) & set(acked)) <= 3, what  # acknowledged ones only within ack_every
        assert set(back) <= set(accepted) | {max(accepted, default=-1) + 1}, what  # the one being written, at most


STORE = """
import json
from iothub import certstore
CA1 = open(%r, 'rb').read()
CA2 = open(%r, 'rb').read()
SHA2 = %r
"""
# A rotation as the session does it: the new set staged (updateRootCerts), tried on the next connection
# (a trial counted on flash), then kept once TLS with the hub succeeded (the old set becomes the fallback).
ROTATE = """
s = certstore.Store('/certs')
s.stage(CA2, SHA2)
data, slot = s.roots_for_connect()
s.tls_ok(slot)
print('DONE', slot)
"""
# What the next boot finds: roots to connect with, which set they are, and a store that opens clean afterwards.
AFTER = """
s = certstore.Store('/certs')
data, slot = s.roots_for_connect()
st = s.status()
s.tls_ok(slot)
print(json.dumps({"slot": slot, "active": [c["sha256"] for c in st["active"]["certs"]] if st["active"] else None,
                  "again": certstore.Store('/certs').problems}))
"""


def test_root_store_power_cut_at_every_flash_operation_keeps_the_board_reachable(tmp_path, pico_image, cas):
    from certhelpers import sha
    from test_certstore import fp, pem

    ca1, ca2 = cas
    base = tmp_path / "base.img"
    with PicoBoard(base, network=False, flash_timing=False) as b:
        b.put("/ca1.pem", pem(ca1))
        b.put("/ca2.pem", pem(ca2))
        b.run(SET_CLOCK % int(time.time()) + STORE % ("/ca1.pem", "/ca2.pem", sha(pem(ca2)))
              + "certstore.Store('/certs').install_active(CA1)")
    # the roots' dates are checked against the board's clock (as after SNTP at boot)
    setup = SET_CLOCK % int(time.time()) + STORE % ("/ca1.pem", "/ca2.pem", sha(pem(ca2)))
    for k, torn, out, after in cut_runs(tmp_path, base, setup + ROTATE, setup + AFTER, 10):
        got = json.loads(after.strip().splitlines()[-1])
        what = "cut at flash operation %d (%s): %s" % (k, "torn" if torn else "not done", got)
        assert got["active"] in ([fp(ca1)], [fp(ca2)]), what  # the old set or the new one, never none
        assert got["again"] == [], what  # and what the boot found half done is finished or undone
