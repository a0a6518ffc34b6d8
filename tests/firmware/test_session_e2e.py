"""End to end: the firmware (.mpy, unix port) against the local hub over real TLS, checked
through the hub's service API: telemetry with properties, C2D, twin get/reported/desired,
direct methods, and the whole session under a 64K heap."""
import json
import time

import pytest

from fwtools import provision, wait_until


pytestmark = pytest.mark.slow


def telemetry(hub, device_id):  # noqa: F811
    return hub.service.telemetry(device_id)


def test_end_to_end(hub, tmp_path, device):  # noqa: F811
    key = provision(hub, tmp_path / "flash", "e2e-1", telemetry_interval=1)
    dev = device(tmp_path / "flash")
    dev.wait_for(r"iothub: connected to %s as e2e-1" % hub.hostname)

    # telemetry with its property bag, as the hub stores it
    msgs = wait_until(lambda: [m for m in telemetry(hub, "e2e-1")], what="telemetry at the hub")
    m = msgs[0]
    body = json.loads(m["body"])
    assert set(body) == {"temperature", "seq"} and 5 < body["temperature"] < 40
    assert m["properties"].get("sensor") == "temperature"
    assert m["properties"].get("seq") == str(body["seq"])

    # the app reported its interval at start; desired telemetry_interval is honoured and reported back
    wait_until(lambda: hub.service.get_twin("e2e-1")["properties"]["reported"].get("telemetry_interval") == 1,
               what="initial reported telemetry_interval")
    hub.service.update_twin("e2e-1", {"telemetry_interval": 2})
    dev.wait_for(r"app: telemetry every 2 s \(desired \$version \d+\)")
    wait_until(lambda: hub.service.get_twin("e2e-1")["properties"]["reported"].get("telemetry_interval") == 2,
               what="reported telemetry_interval 2")

    # C2D with properties
    hub.service.send_c2d("e2e-1", "hello device", {"color": "blue green"})
    m = dev.wait_for(r"app: c2d hello device (\{.*\})")
    assert json.loads(m[0].group(1))["color"] == "blue green"

    # direct methods: ping answers on the request's $rid; unknown methods get 404
    status, payload = hub.service.invoke_method("e2e-1", "ping", {"n": 7}, timeout=30)
    assert status == 200 and payload == {"pong": {"n": 7}, "device": "e2e-1"}
    status, payload = hub.service.invoke_method("e2e-1", "nosuch", None, timeout=30)
    assert status == 404

    # values the cloud sets are bounded by config (telemetry_interval_min/max): refused and reported
    hub.service.update_twin("e2e-1", {"telemetry_interval": 1e-9})
    dev.wait_for(r"app: desired telemetry_interval 1e-09 refused \(allowed: 1 to 86400 s\)")
    wait_until(lambda: (hub.service.get_twin("e2e-1")["properties"]["reported"].get("telemetry_interval") or {}).get(
        "refused") == 1e-9, what="refusal reported")
    assert len([x for x in dev.lines if "telemetry every" in x]) == 1  # still every 2 s

    # reboot {"delay": s}: acknowledged first, then the board resets after the delay (the unix board exits 0)
    status, payload = hub.service.invoke_method("e2e-1", "reboot", {"delay": "soon"}, timeout=30)
    assert status == 400 and "delay must be a number" in payload["error"]
    status, payload = hub.service.invoke_method("e2e-1", "reboot", {"delay": 3}, timeout=30)
    assert status == 200 and payload == {"rebooting_in_ms": 3000}
    asked = time.monotonic()
    dev.wait_for(r"board: reset")
    assert time.monotonic() - asked >= 2.9
    assert dev.proc.wait(30) == 0

    log = dev.log()
    assert key not in log and "SharedAccessSignature" not in log
    assert "SharedAccessSignature" not in hub.log() and key not in hub.log()


def test_desired_version_order_after_reconnect(hub, tmp_path, device):  # noqa: F811
    # desired changes made while the device is away arrive through the twin GET on reconnect
    provision(hub, tmp_path / "flash", "e2e-2", telemetry_interval=5)
    dev = device(tmp_path / "flash")
    dev.wait_for(r"iothub: connected")
    dev.stop()
    hub.service.update_twin("e2e-2", {"telemetry_interval": 3})
    dev2 = device(tmp_path / "flash")
    dev2.wait_for(r"app: telemetry every 3 s")
    hub.service.update_twin("e2e-2", {"telemetry_interval": 4})
    dev2.wait_for(r"app: telemetry every 4 s")
    # the same patch seen twice (full twin, then patch) is applied once
    assert len([x for x in dev2.lines if "telemetry every 4 s" in x]) == 1
    # the twin's old camelCase name still works, with a warning to rename it
    hub.service.update_twin("e2e-2", {"telemetry_interval": None, "telemetryInterval": 6})
    dev2.wait_for(r"app: telemetry every 6 s")
    dev2.wait_for(r"app: desired telemetryInterval is the old name of telemetry_interval")
