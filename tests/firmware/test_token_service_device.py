"""The token-service pattern on the firmware (config "auth": "token-service", lib/iothub/tokenclient.py): a
device with no hub key gets short-lived device tokens from `upyhub hub token-service` (a per-device secret
of the solution's own, a single-use challenge, HTTPS under the pinned roots) before each connection and
renewal. Revoked in the solution's registry, it gets no new token and the hub drops it when its token
expires; with the service unreachable it keeps its current token until then."""
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from upyhub import sim
from upyhub.hub import tokenservice

from fwtools import wait_until

pytestmark = pytest.mark.slow


class TokenService:
    def __init__(self, hub, registry, ttl):
        self.log_path = registry.with_suffix(".log")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "upyhub", "hub", "token-service", "serve", "--data", str(hub.data_dir),
                 "--registry", str(registry), "--bind", "127.0.0.1", "--port", "0", "--ttl", str(ttl)],
                stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        line = wait_until(lambda: next((x for x in self.log_path.read_text().splitlines()
                                        if x.startswith("token_service_port=")), None), what="the token service")
        self.port = int(line.split("=")[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


@pytest.fixture
def service(hub, tmp_path):
    made = []

    def start(ttl=600):
        registry = tmp_path / "devices.csv"
        if not registry.exists():
            registry.write_text("device_id,secret_b64,enabled\n")
            registry.chmod(0o600)
        s = TokenService(hub, registry, ttl)
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


def flash_for(hub, flash, device_id, secret, port):
    sim.write_flash(flash, hostname=hub.hostname, device_id=device_id, ca_pem=hub.ca_pem, port=hub.mqtt_port,
                    gateway=hub.host, auth="token-service", telemetry_interval=1, retry_cap=4,
                    token_service={"host": hub.hostname, "port": port, "gateway": "127.0.0.1"})
    (pathlib.Path(flash) / "secrets.json").write_text('{"token_secret": "%s"}' % secret)
    return flash


def boot(hub, tmp_path, device, service, device_id, ttl):
    """device_id on the hub (its keys stay there) and in the token service's registry, booted; -> (service,
    flash, secret, device)."""
    hub.add_device(device_id)
    svc = service(ttl=ttl)
    secret = tokenservice.add_device(tmp_path / "devices.csv", device_id)
    flash = flash_for(hub, tmp_path / "flash", device_id, secret, svc.port)
    return svc, flash, secret, device(flash)


def test_a_device_with_no_hub_key_connects_and_renews(hub, tmp_path, device, service):  # noqa: F811
    svc, flash, secret, dev = boot(hub, tmp_path, device, service, "ts-1", 30)
    dev.wait_for(r"iothub: connected to %s as ts-1 \(token valid (\d+) s\)" % hub.hostname)
    wait_until(lambda: hub.service.telemetry("ts-1"), what="telemetry")
    dev.wait_for(r"iothub: renewing token before it expires", timeout=60)
    dev.wait_for(r"iothub: connected to ", count=2, timeout=60)
    log = dev.log()
    assert secret not in log and "SharedAccessSignature" not in log
    keys = hub.service.get_device("ts-1")["authentication"]["symmetricKey"]
    assert not any(k in (flash / "secrets.json").read_text() for k in keys.values() if k)  # no hub key on it


def test_revoked_device_gets_no_token_and_is_dropped_at_expiry(hub, tmp_path, device, service):  # noqa: F811
    svc, flash, secret, dev = boot(hub, tmp_path, device, service, "ts-2", 20)
    registry = tmp_path / "devices.csv"
    dev.wait_for(r"iothub: connected to ")
    subprocess.run([sys.executable, "-m", "upyhub", "hub", "token-service", "device", "disable", "ts-2",
                    "--registry", str(registry)], check=True, capture_output=True, timeout=60)
    # no new token: at its renewal (or when the hub ends the connection at the token's expiry) it gets
    # none, and it stays off the hub
    dev.wait_for(r"iothub: token service refused: HTTP 403", timeout=90)
    n = len([x for x in dev.lines if "iothub: connected to " in x])
    dev.wait_for(r"iothub: token service refused: HTTP 403", count=3, timeout=90)
    assert len([x for x in dev.lines if "iothub: connected to " in x]) == n


def test_service_unreachable_keeps_the_current_token(hub, tmp_path, device, service):  # noqa: F811
    svc, flash, secret, dev = boot(hub, tmp_path, device, service, "ts-3", 120)
    dev.wait_for(r"iothub: connected to ")
    svc.stop()
    hub.restart()  # the device must connect again, while the token service is down
    dev.wait_for(r"iothub: token service unreachable: .*: connecting with the current token \(valid \d+ s more\)",
                 timeout=90)
    dev.wait_for(r"iothub: connected to ", count=2, timeout=90)
