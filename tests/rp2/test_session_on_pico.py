"""The whole firmware on the emulated Pico (build/rp2's image: MicroPython's rp2 port, the package frozen, mbed TLS
3.6 of the chip, littlefs on its flash driver, lwIP over PPP on UART0) against the local hub, the board reached
only through its modem (a private network namespace). Provisioned and audited by the project's own CLI through
the board's serial port, then checked through the hub's service API: a token minted on the chip, TLS with the
pinned root, telemetry with properties, the twin both ways, C2D, a direct method, a hub restart, root rotation
through updateRootCerts, and the outbox across power cuts at a flash operation."""
import hashlib
import json

import pytest

from picosession import (at_hub, log, mpremote, pico_for, provision, queued, slow_hub, upyhub, wait_for,
                         wait_until)

pytestmark = pytest.mark.slow

CONNECTED = r"iothub: connected to %s as %s"


@pytest.fixture
def hub(tmp_path, pico_network):
    h = slow_hub(tmp_path / "hub")
    yield h
    h.stop()


@pytest.fixture
def pico(hub, tmp_path):
    p = pico_for(hub, tmp_path / "pico.img")
    p.start()
    yield p
    p.close()


def reported(hub, device_id):
    return hub.service.get_twin(device_id)["properties"]["reported"]


def test_provisioned_audited_and_connected_with_a_token_minted_on_the_chip(hub, pico):
    first = provision(pico, hub, "pico-1", "--no-reset")
    assert first["hub"] == "created" and first["check"] == "accepted"
    # The package is in the firmware: the flash gets boot.py, main.py, the settings and the roots, no lib/.
    assert {"boot.py", "main.py", "config.json", "secrets.json"} <= set(first["changed"])
    assert not [p for p in first["changed"] if p.startswith("lib/")]
    again = provision(pico, hub, "pico-1", "--no-reset")
    assert again["changed"] == [] and again["hub"] == "unchanged"  # a re-run converges: nothing to write

    audit = upyhub("audit", pico.port, "--board", "rp2_pico_ppp", "-o", "json")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    findings = json.loads(audit.stdout)["findings"]
    assert not [f for f in findings if f["severity"] == "critical"], findings

    mpremote(pico, "reset")  # as provisioning does at its end: the board boots main.py
    wait_for(pico, CONNECTED % (hub.hostname, "pico-1"))

    msgs = wait_until(lambda: hub.service.telemetry("pico-1"), what="telemetry at the hub")
    body = json.loads(msgs[0]["body"])
    assert set(body) == {"temperature", "seq"} and 15 < body["temperature"] < 35  # the chip's sensor, ~24 C
    assert msgs[0]["properties"]["sensor"] == "temperature"
    assert msgs[0]["properties"]["seq"] == str(body["seq"])
    wait_until(lambda: reported(hub, "pico-1").get("board") == "rp2_pico_ppp", what="the app's report")

    key = json.loads(upyhub("hub", "device", "show", "pico-1", "--keys", "--data", hub.data_dir).stdout)[
        "authentication"]["symmetricKey"]["primaryKey"]
    session = log(pico)[log(pico).index("iothub: connected"):]  # what the firmware logged (not provisioning's traffic)
    for text in (session, hub.log()):
        assert key not in text
        assert "SharedAccessSignature" not in text


def test_twin_c2d_a_method_and_a_hub_restart(hub, pico):
    provision(pico, hub, "pico-2")
    wait_for(pico, CONNECTED % (hub.hostname, "pico-2"))
    hub.service.update_twin("pico-2", {"telemetry_interval": 3})
    wait_for(pico, r"app: telemetry every 3 s \(desired \$version \d+\)")
    wait_until(lambda: reported(hub, "pico-2").get("telemetry_interval") == 3, what="reported interval 3")

    hub.service.send_c2d("pico-2", "hello pico", {"color": "blue green"})
    m = wait_for(pico, r"app: c2d hello pico (\{.*\})")
    assert json.loads(m[0].group(1))["color"] == "blue green"

    status, payload = hub.service.invoke_method("pico-2", "ping", {"n": 7}, timeout=60)
    assert (status, payload) == (200, {"pong": {"n": 7}, "device": "pico-2"})

    hub.restart()  # the hub goes away and comes back: the board reconnects on its own
    wait_for(pico, CONNECTED % (hub.hostname, "pico-2"), count=2, timeout=240)
    before = len(hub.service.telemetry("pico-2"))
    wait_until(lambda: len(hub.service.telemetry("pico-2")) > before, what="telemetry after the restart")


def test_root_rotation_over_the_air_on_the_chip(hub, pico):
    provision(pico, hub, "pico-rot")
    wait_for(pico, CONNECTED % (hub.hostname, "pico-rot"))
    wait_until(lambda: "rootCerts" in reported(hub, "pico-rot"), what="rootCerts reported")

    assert upyhub("hub", "rotate-ca", "--data", hub.data_dir).returncode == 0
    bundle = upyhub("hub", "ca", "--all", "--data", hub.data_dir).stdout.encode()
    assert bundle.count(b"BEGIN CERTIFICATE") == 2
    status, body = hub.service.invoke_method(
        "pico-rot", "updateRootCerts", {"pem": bundle.decode(), "sha256": hashlib.sha256(bundle).hexdigest()},
        timeout=120)
    assert status == 200 and body["status"] == "staged", body

    hub.restart()  # the next TLS session tries the staged set and keeps it
    wait_for(pico, CONNECTED % (hub.hostname, "pico-rot"), count=2, timeout=300)
    wait_until(lambda: len((reported(hub, "pico-rot")["rootCerts"]["active"] or {}).get("certs", [])) == 2,
               what="both roots reported active")

    assert upyhub("hub", "rotate-ca", "--activate", "--data", hub.data_dir).returncode == 0
    hub.restart()  # now the hub's certificate is from the new CA: only the new root verifies it
    wait_for(pico, CONNECTED % (hub.hostname, "pico-rot"), count=3, timeout=300)


@pytest.mark.parametrize("torn", [False, True], ids=["cut-before-the-operation", "cut-halfway-through-it"])
def test_outbox_keeps_every_accepted_message_across_a_power_cut(hub, pico, torn):
    provision(pico, hub, "pico-cut")
    wait_for(pico, CONNECTED % (hub.hostname, "pico-cut"))
    hub.service.update_twin("pico-cut", {"telemetry_interval": 1})
    wait_for(pico, r"app: telemetry every 1 s")

    hub.stop()  # the hub is away: readings pile up in the outbox on flash
    start = len(queued(pico))
    wait_until(lambda: len(queued(pico)) >= start + 4, timeout=120, what="readings queued while the hub is away",
               pico=pico)
    pico.cut(after=2, torn=torn)  # the second flash erase or program from now never completes
    cut = pico.wait_event("cut", 120)
    assert cut["torn"] is torn
    accepted = queued(pico)  # send() returned for these: they were on flash before the power went

    hub.start()
    pico.power("on")
    wait_until(lambda: set(accepted) <= set(at_hub(hub, "pico-cut")), timeout=300,
               what="every accepted message at the hub after the power cut", pico=pico)
    assert "message(s) lost" not in log(pico)


def test_modem_gone_then_back_the_board_dials_again(hub, pico):
    # The PPP peer disappears (slirp killed: no answer to the board's LCP echoes, as when a modem loses its
    # carrier); later a fresh one answers (a modem that reset). The board notices, fails to dial while the peer
    # is gone (one line each time), and is back on the hub by itself once it answers.
    provision(pico, hub, "pico-ppp")
    wait_for(pico, CONNECTED % (hub.hostname, "pico-ppp"))
    mark = len(log(pico))
    pico.modem(False)
    wait_for(pico, r"iothub: connection lost", timeout=180, after=mark)
    wait_for(pico, r"iothub: network unavailable: (timeout|peer-gone|link-down)", timeout=300, after=mark)
    pico.modem(True)
    wait_for(pico, CONNECTED % (hub.hostname, "pico-ppp"), timeout=300, after=mark)
    before = len(hub.service.telemetry("pico-ppp"))
    wait_until(lambda: len(hub.service.telemetry("pico-ppp")) > before, what="telemetry after the modem came back",
               pico=pico)
