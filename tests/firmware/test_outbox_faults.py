"""Durable, pipelined telemetry end to end: the sample app reads every 0.2-0.5 s, the firmware keeps
every reading in its flash outbox until the hub acknowledges it, with up to 8 in flight. Counted by
message id ($.mid, made on the device at send() time) against the hub's store, through faults:
the hub killed and restarted, the hub frozen (SIGSTOP) for 30 s, token renewal every ~24 s, and
the device killed while the hub is down with readings queued. 0 lost; duplicates only within the
in-flight window, and told apart by $.mid."""
import collections
import re
import signal
import time

import pytest

from fwtools import provision, wait_until

pytestmark = pytest.mark.slow

INFLIGHT = 8


def accepted(dev):
    # message ids the device accepted (send() returned), in order
    return [m.group(1) for m in (re.search(r"app: telemetry \d+ queued as (\S+)", x) for x in dev.lines) if m]


def at_hub(hub, device_id):
    # message ids in the hub's store, in the order it stored them (all pages)
    out, since = [], 0
    while True:
        rows = hub.service.telemetry(device_id, since=since)
        if not rows:
            return out
        out += [m["messageId"] for m in rows]
        since = rows[-1]["seq"]


def delivered(hub, dev, device_id, what):
    # Wait for every message accepted so far at the hub; -> Counter of the message ids stored there, with
    # .accepted: those messages (the device goes on sending meanwhile: later ones need not be there yet).
    want = set(accepted(dev))
    wait_until(lambda: want <= set(at_hub(hub, device_id)), timeout=120,
               what="%s: %d accepted messages at the hub" % (what, len(want)))
    counts = collections.Counter(at_hub(hub, device_id))
    counts.accepted = want
    return counts


def check(counts, disruptions):
    dups = sum(n - 1 for n in counts.values() if n > 1)
    assert dups <= INFLIGHT * disruptions, (dups, [m for m, n in counts.items() if n > 1])
    assert counts.accepted <= set(counts)  # 0 lost


def test_hub_killed_and_restarted(hub, tmp_path, device):  # noqa: F811
    provision(hub, tmp_path / "flash", "ob-kill", telemetry_interval=0.2, telemetry_interval_min=0.1, retry_cap=4)
    dev = device(tmp_path / "flash")
    wait_until(lambda: len(at_hub(hub, "ob-kill")) >= 10, what="first telemetry")
    hub.proc.kill()  # no goodbye: the process is gone
    hub.proc.wait()
    hub.proc = None
    n = len(accepted(dev))
    wait_until(lambda: len(accepted(dev)) >= n + 25, what="readings while the hub is dead")
    hub.start()
    dev.wait_for(r"iothub: connected ", count=2, timeout=120)
    wait_until(lambda: len(accepted(dev)) >= n + 40, what="readings after")
    check(delivered(hub, dev, "ob-kill", "after the restart"), 1)


def test_hub_frozen_for_30_s_the_app_keeps_reading(hub, tmp_path, device):  # noqa: F811
    provision(hub, tmp_path / "flash", "ob-freeze", telemetry_interval=0.5, telemetry_interval_min=0.1,
              keepalive=60, retry_cap=4)
    dev = device(tmp_path / "flash")
    wait_until(lambda: len(at_hub(hub, "ob-freeze")) >= 5, what="first telemetry")
    n = len(accepted(dev))
    hub.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(30)
        during = len(accepted(dev)) - n
    finally:
        hub.proc.send_signal(signal.SIGCONT)
    # one reading each 0.5 s all along: nothing waited for a PUBACK that did not come
    assert during >= 50, (during, dev.log()[-3000:])
    check(delivered(hub, dev, "ob-freeze", "after the freeze"), 1)


def test_token_renewal_every_24_s_at_5_messages_a_second(hub, tmp_path, device):  # noqa: F811
    provision(hub, tmp_path / "flash", "ob-renew", telemetry_interval=0.2, telemetry_interval_min=0.1, token_ttl=30)
    dev = device(tmp_path / "flash")
    dev.wait_for(r"iothub: renewing token before it expires", count=2, timeout=120)
    dev.wait_for(r"iothub: connected ", count=3, timeout=60)
    counts = delivered(hub, dev, "ob-renew", "across renewals")
    assert len(counts) >= 200
    check(counts, 2)
    assert "SAS token expired" not in hub.log()


def test_device_killed_while_the_hub_is_down_then_both_back(hub, tmp_path, device):  # noqa: F811
    provision(hub, tmp_path / "flash", "ob-power", telemetry_interval=0.2, telemetry_interval_min=0.1, retry_cap=2)
    dev = device(tmp_path / "flash")
    wait_until(lambda: len(at_hub(hub, "ob-power")) >= 10, what="first telemetry")
    hub.stop()
    n = len(accepted(dev))
    wait_until(lambda: len(accepted(dev)) >= n + 30, what="readings queued while the hub is down")
    dev.proc.kill()  # power cut: no clean close, whatever was in RAM is gone
    dev.proc.wait()
    before = accepted(dev)
    hub.start()
    again = device(tmp_path / "flash")
    again.wait_for(r"iothub: connected ", timeout=120)
    wait_until(lambda: len(accepted(again)) >= 20, what="readings after the reboot")
    counts = delivered(hub, again, "ob-power", "after the reboot")
    assert set(before) <= set(counts)  # every reading of the first boot, delivered by the second
    check(counts, 2)
    # the ones from before the cut came first, in order, before anything newer
    mids = at_hub(hub, "ob-power")
    first_new = min(mids.index(m) for m in accepted(again))
    old = [m for m in mids[:first_new]]
    assert [m for m in dict.fromkeys(old)] == [m for m in before if m in set(old)]
