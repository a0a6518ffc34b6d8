"""`upyhub hub token-service serve` as a subprocess for tests, and HTTPS calls to it."""
import json
import os
import signal
import ssl
import subprocess
import sys

from hubdev import wait_for
from upyhub.hub import tokenservice
from upyhub.hub.client import _Conn

START_DEADLINE = 90


class TokenServiceProc:
    """`upyhub hub token-service serve` for a hub, on a free port of 127.0.0.1."""

    def __init__(self, hub, registry, *args):
        self.hub, self.registry = hub, registry
        self.log_path = registry.parent / ("%s.log" % registry.stem)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "upyhub", "hub", "token-service", "serve", "--data", str(hub.data_dir),
                 "--registry", str(registry), "--bind", "127.0.0.1", "--port", "0", *args],
                stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        line = wait_for(lambda: self.proc.poll() is None and next(
            (ln for ln in self.log().splitlines() if ln.startswith("token_service_port=")), None),
            START_DEADLINE, "the token service's port")
        self.port = int(line.split("=")[1])

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0

    def call(self, method, path, body=None, raw=None):
        """(status, JSON answer) of one HTTPS request, verifying the hub CA for the hub hostname."""
        ctx = ssl.create_default_context(cafile=str(self.hub.ca_path))
        conn = _Conn("127.0.0.1", self.port, self.hub.hostname, ctx, 60)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body))
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    def token(self, device_id, secret):
        return tokenservice.fetch_token("127.0.0.1", self.port, self.hub.ca_path, self.hub.hostname, device_id,
                                        secret)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
