"""The firmware running on the emulated Pico against a local hub, as tests/rp2's session tests use it: a hub that
gives a slow board time for its TLS handshake, a Pico whose modem reaches that hub's ports, the project's own
CLI (`upyhub provision`, `upyhub audit`, mpremote) driving it through its serial port, and the board's log read
from its console."""
import json
import os
import re
import subprocess
import sys
import time

from hubfixture import LocalHub
from upyhub.pico import Pico
from upyhub.ppplink import HOST_ALIAS as BOARD_GATEWAY  # the hub, as the board sees it through its modem
from upyhub.sim import PICO_HANDSHAKE_S as HANDSHAKE_S  # the TLS deadline a hub gives the emulated chip


def slow_hub(path):
    return LocalHub(path, handshake_timeout=HANDSHAKE_S).start()


def pico_for(hub, image, **kw):
    """A Pico (not started) whose modem reaches the hub's MQTT and DPS ports at 10.0.2.2, same numbers."""
    ports = {hub.mqtt_port: (hub.host, hub.mqtt_port), hub.dps_port: (hub.host, hub.dps_port)}
    return Pico(image, forward=ports, **kw)


def upyhub(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "upyhub"] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def provision(pico, hub, device_id, *extra):
    """`upyhub provision` of the Pico on its port for the local hub; returns the JSON summary."""
    p = upyhub("provision", pico.port, "--board", "rp2_pico_ppp", "--device-id", device_id, "--data", hub.data_dir,
               "--device-gateway", BOARD_GATEWAY, "--ntp", BOARD_GATEWAY, "-o", "json", *extra)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


def mpremote(pico, *args, timeout=120):
    p = subprocess.run([sys.executable, "-m", "mpremote", "connect", pico.port] + list(args), capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def log(pico):
    return pico.console().decode(errors="replace").replace("\r\n", "\n")


def wait_for(pico, pattern, timeout=180, count=1, after=0):
    """Wait until `count` lines of the board's console (from offset `after`) match the regex; returns the matches."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in (rx.search(line) for line in log(pico)[after:].splitlines()) if m]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %r (x%d); the board printed:\n%s"
                                 % (pattern, count, log(pico)[-3000:]))
        time.sleep(0.1)


def wait_until(fn, timeout=120, what="condition", pico=None):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s%s" % (
                what, "; the board printed:\n" + log(pico)[-3000:] if pico is not None else ""))
        time.sleep(0.25)


def queued(pico):
    """The message ids the app printed as accepted (send() returned: on flash), in order."""
    return re.findall(r"app: telemetry \d+ queued as (\S+)", log(pico))


def at_hub(hub, device_id):
    """The $.mid of every telemetry message the hub stored for the device."""
    return [m.get("messageId") for m in hub.service.telemetry(device_id)]
