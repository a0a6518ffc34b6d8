"""pytest plugin: a running local hub (`upyhub hub serve` as a subprocess) for any test.

Fixtures `hub` (a fresh hub per test) and `hub_session` (one for the session). Attributes:
.hostname .host .mqtt_port .https_port .ca_path .ca_pem .data_dir .owner_cs .service (ServiceClient)
.dps_port .dps_host .dps_hostname .id_scope (the local DPS)
.add_device(device_id, **kw) -> primary key, .stop(), .start() (same data and ports), .restart(), .log().
LocalHub(..., handshake_timeout=S) serves with `--handshake-timeout S` (slow clients: an emulated board).
"""
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from upyhub.hub import pki as pki_mod
from upyhub.hub.client import ServiceClient
from upyhub.hub.registry import Registry

START_DEADLINE = 90  # seconds: generous for a loaded 2-core machine


class LocalHub:
    host = "127.0.0.1"

    def __init__(self, data_dir, mqtt_port=0, https_port=0, hostname=None, dps_port=0, dps_host=None, serve_args=(),
                 handshake_timeout=None):
        """handshake_timeout: seconds the hub gives a device connection to finish TLS (None: the hub's default)."""
        self.data_dir = pathlib.Path(data_dir)
        self.serve_args = list(serve_args)
        if handshake_timeout is not None:
            self.serve_args += ["--handshake-timeout", str(handshake_timeout)]
        self.mqtt_port, self.https_port, self.dps_port = mqtt_port, https_port, dps_port
        self.dps_host = dps_host or self.host
        self.proc = None
        self.returncode = None  # of the last stop(): 0 when the hub stopped cleanly on SIGTERM
        self.log_path = self.data_dir / "hub.log"
        self._service = None
        if not pki_mod.PKI(self.data_dir).exists():
            cmd = [sys.executable, "-m", "upyhub", "hub", "init", "--data", str(self.data_dir)]
            if hostname:
                cmd += ["--hostname", hostname]
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    # --- life cycle ---
    def start(self):
        assert self.proc is None, "hub already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "upyhub", "hub", "serve", "--data", str(self.data_dir), "--bind", self.host,
             "--port", str(self.mqtt_port), "--https-port", str(self.https_port), "--dps-port", str(self.dps_port),
             "--dps-bind", self.dps_host] + self.serve_args,
            stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        logf.close()
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode("utf-8", "replace")
            for line in text.splitlines():
                if line.startswith("mqtt_port="):
                    fields = dict(f.split("=") for f in line.split())
                    self.mqtt_port, self.https_port = int(fields["mqtt_port"]), int(fields["https_port"])
                    self.dps_port = int(fields["dps_port"])
                    self._service = None
                    return self
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError("hub exited at start:\n" + text[-2000:])
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("hub did not report its ports within %ds" % START_DEADLINE)

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self.returncode = self.proc.returncode
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- facts ---
    @property
    def pki(self):
        return pki_mod.PKI(self.data_dir)

    @property
    def hostname(self):
        return self.pki.hostname

    @property
    def dps_hostname(self):
        return self.pki.dps_hostname

    @property
    def id_scope(self):
        from upyhub.hub import dps
        return dps.id_scope(self.data_dir)

    @property
    def ca_path(self):
        return self.pki.ca_path()

    @property
    def ca_pem(self):
        return self.ca_path.read_bytes()

    def connection_string(self, policy):
        reg = Registry(self.data_dir)
        try:
            return reg.connection_string(self.hostname, policy)
        finally:
            reg.close()

    @property
    def owner_cs(self):
        return self.connection_string("iothubowner")

    @property
    def service(self):
        if self._service is None:
            self._service = ServiceClient(self.owner_cs, self.ca_path, host=self.host, port=self.https_port)
        return self._service

    def add_device(self, device_id, **kw):
        """Register a device through the service API; returns its primary key (None for X.509 devices)."""
        doc = self.service.put_device(device_id, **kw)
        return doc["authentication"]["symmetricKey"]["primaryKey"]


@pytest.fixture
def hub(tmp_path):
    h = LocalHub(tmp_path / "hub").start()
    yield h
    h.stop()


@pytest.fixture(scope="session")
def hub_session(tmp_path_factory):
    h = LocalHub(tmp_path_factory.mktemp("hub")).start()
    yield h
    h.stop()
