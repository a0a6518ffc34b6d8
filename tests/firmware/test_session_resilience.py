"""The session over time, against the local hub: token renewal before expiry (nothing lost), reconnect
with jittered exponential backoff after the hub goes away, Wi-Fi loss, and a refused CONNECT that
is reported once and retried slowly. Intervals are read from the device's own log lines."""
import json
import re

import pytest

from fwtools import provision, wait_until


pytestmark = pytest.mark.slow


def seqs_at_hub(hub, device_id):  # noqa: F811
    return sorted(json.loads(m["body"])["seq"] for m in hub.service.telemetry(device_id))


def queued(dev):
    return [int(m.group(1)) for m in (re.search(r"app: telemetry (\d+) queued", x) for x in dev.lines) if m]


def test_token_renewed_before_expiry_nothing_lost(hub, tmp_path, device):  # noqa: F811
    key = provision(hub, tmp_path / "flash", "renew-1", token_ttl=20, telemetry_interval=1)
    dev = device(tmp_path / "flash")
    dev.wait_for(r"iothub: connected .*token valid (\d+) s")
    dev.wait_for(r"iothub: renewing token before it expires", timeout=150, count=3)
    dev.wait_for(r"iothub: connected ", count=4, timeout=60)
    last = max(queued(dev))
    wait_until(lambda: seqs_at_hub(hub, "renew-1") and seqs_at_hub(hub, "renew-1")[-1] >= last,
               what="telemetry up to %d at the hub" % last)
    got = set(seqs_at_hub(hub, "renew-1"))
    assert set(range(1, last + 1)) <= got, sorted(set(range(1, last + 1)) - got)
    log = dev.log()
    # renewed, never dropped: the hub never had to close an expired session
    assert "connection lost" not in log, log
    assert "SAS token expired" not in hub.log()
    for m in re.finditer(r"token valid (\d+) s", log):
        assert 5 <= int(m.group(1)) <= 20  # minted for 20 s (a slow connect eats into it)
    assert key not in log and "SharedAccessSignature" not in log


def test_backoff_when_hub_goes_away(hub, tmp_path, device):  # noqa: F811
    # one reading every 5 s: the outage (up to ~50 s of backoff and restart) stays within the 16-message queue
    provision(hub, tmp_path / "flash", "backoff-1", telemetry_interval=5, retry_cap=60)
    dev = device(tmp_path / "flash")
    dev.wait_for(r"iothub: connected ")
    before = len(dev.lines)
    hub.stop()
    dev.wait_for(r"iothub: connection lost")
    retry = r"iothub: retry in (\d+) ms \(attempt (\d+)\)"
    earlier = len(dev.wait_for(retry, count=0))  # any from before the outage (a slow first connect)
    dev.wait_for(retry, count=earlier + 5, timeout=120)
    hub.start()
    dev.wait_for(r"iothub: connected ", count=2, timeout=120)
    found = [m for m in (re.search(retry, x) for x in dev.lines[before:]) if m]
    delays = [(int(m.group(2)), int(m.group(1))) for m in found][:5]
    assert [a for a, _ in delays] == [1, 2, 3, 4, 5]
    for attempt, d in delays:  # equal jitter: within [cap/2, cap] of 1 s * 2^(n-1)
        full = 1000 << (attempt - 1)
        assert full // 2 <= d <= full, delays
    ds = [d for _, d in delays]
    assert ds == sorted(ds)  # the windows do not overlap: intervals grow
    assert any(d not in (1000 << (a - 1), 500 << (a - 1)) for a, d in delays)  # jittered, not fixed
    # everything queued while the hub was away is delivered after it came back
    last = max(queued(dev))
    wait_until(lambda: seqs_at_hub(hub, "backoff-1") and seqs_at_hub(hub, "backoff-1")[-1] >= last,
               what="telemetry up to %d" % last)
    outage = [int(m.group(1)) for m in (re.search(r"app: telemetry (\d+) queued", x) for x in dev.lines[before:]) if m]
    got = set(seqs_at_hub(hub, "backoff-1"))
    assert "queue full" not in dev.log()
    assert outage and set(outage) <= got, (sorted(set(outage) - got), dev.log())


def test_wifi_lost_and_back(hub, tmp_path, device):  # noqa: F811
    flash = tmp_path / "flash"
    provision(hub, flash, "wifi-1", telemetry_interval=1, wifi={"ssid": "lab"})
    dev = device(flash)
    dev.wait_for(r"iothub: connected ")
    (flash / ".sim").mkdir()
    (flash / ".sim" / "wifi-down").write_text("")  # the radio loses its access point
    dev.wait_for(r"iothub: connection lost: network down")
    dev.wait_for(r"iothub: network unavailable: ap-not-found", count=2)
    (flash / ".sim" / "wifi-down").unlink()
    dev.wait_for(r"iothub: connected ", count=2, timeout=120)


def set_status(hub, device_id, status):  # noqa: F811
    doc = hub.service.get_device(device_id)
    keys = doc["authentication"]["symmetricKey"]
    hub.service.put_device(device_id, status=status, primary_key=keys["primaryKey"],
                           secondary_key=keys["secondaryKey"], etag=doc["etag"])


def test_refused_connect_reported_once_retried_slowly(hub, tmp_path, device):  # noqa: F811
    flash = tmp_path / "flash"
    provision(hub, flash, "refused-1", refused_retry=4)
    set_status(hub, "refused-1", "disabled")
    dev = device(flash)
    dev.wait_for(r"iothub: CONNECT refused by the hub: not authorized \(CONNACK 5\); retrying every 4 s")
    wait_until(lambda: hub.log().count("refused 'refused-1'") >= 3, what="three refused attempts at the hub")
    assert len([x for x in dev.lines if "CONNECT refused" in x]) == 1  # reported once
    assert not [x for x in dev.lines if "retry in" in x]  # not the fast backoff path
    set_status(hub, "refused-1", "enabled")
    dev.wait_for(r"iothub: connected ", timeout=60)
    # slow: the hub's own time stamps (HH:MM:SS) show attempts at least refused_retry apart
    # (a lower bound only: a loaded machine can make them later, never sooner)
    stamps = [x.split()[0] for x in hub.log().splitlines() if "refused 'refused-1'" in x]
    secs = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in (t.split(":") for t in stamps)]
    gaps = [(b - a) % 86400 for a, b in zip(secs, secs[1:])]
    assert len(gaps) >= 2 and min(gaps) >= 3, gaps
