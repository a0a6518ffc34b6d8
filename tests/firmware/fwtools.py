"""Helpers for the firmware tests (imported by conftest.py and the tests)."""
import base64
import os
import pathlib
import re
import socket
import ssl
import subprocess
import threading
import time

from polling import wait_until  # noqa: F401  (the firmware tests import it from here)
from upyhub import sim

ROOT = pathlib.Path(__file__).resolve().parents[2]
STANDINS = pathlib.Path(__file__).resolve().parent / "standins"
HUBNAME = "localhub.azure-devices.net"


def new_key():
    return base64.b64encode(os.urandom(32)).decode()


def provision(hub, flash, device_id, **settings):
    """Register device_id on the local hub and write a flash folder that connects to it; returns its key."""
    key = hub.add_device(device_id)
    sim.write_flash(flash, hostname=hub.hostname, device_id=device_id, device_key=key, ca_pem=hub.ca_pem,
                    port=hub.mqtt_port, gateway=hub.host, **settings)
    return key




class Device:
    """A running simulated board; its log lines are collected as they come."""

    def __init__(self, flash, tree, heapsize=None, source=False, path_extra=(), executable=None, preload=()):
        self.flash = pathlib.Path(flash)
        self.lines = []
        kw = {"executable": str(executable)} if executable else {}  # another unix port build (micropython-32)
        if preload:  # stand-in modules imported before boot.py (e.g. lwipsocket from tests/firmware/standins)
            argv, env, _ = sim.command(flash, tree=tree, heapsize=heapsize, source=source,
                                       path_extra=[STANDINS] + list(path_extra), **kw)
            code = argv[-1]
            at = code.index("_hosts = ")  # once sim's boot code has set up the paths, before it wraps socket
            argv[-1] = code[:at] + "".join("import %s\n" % m for m in preload) + code[at:]
            self.proc = subprocess.Popen(argv, env=env, cwd=str(self.flash.resolve()), stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, bufsize=1)
        else:
            self.proc = sim.start(flash, tree=tree, heapsize=heapsize, source=source, path_extra=path_extra, **kw)
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
        self.proc.stdout.close()

    def log(self):
        return "\n".join(self.lines)

    def wait_for(self, pattern, timeout=60, count=1):
        """Wait until `count` log lines match the regex; returns the matches."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in (rx.search(line) for line in list(self.lines)) if m]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None and not self._t.is_alive():
                raise AssertionError("device exited (%s) before %r:\n%s" % (self.proc.returncode, pattern, self.log()))
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %r (x%d):\n%s" % (pattern, count, self.log()))
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._t.join(5)


class Recorder:
    """A TCP server on 127.0.0.1:0 that records every byte a client sends after (optional) TLS.

    ctx None: plain TCP (answers like a broker would, with a CONNACK). The handshake outcome and
    the application data are recorded per connection."""

    def __init__(self, ctx=None):
        self.ctx = ctx
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = bytearray()
        self.handshakes = []  # "ok <version>" or the server-side error
        self._stop = False
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        conn.settimeout(30)
        try:
            if self.ctx is not None:
                try:
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                    self.handshakes.append("ok " + conn.version())
                except (ssl.SSLError, OSError) as e:
                    self.handshakes.append("failed %s" % (getattr(e, "reason", None) or e))
                    return
            else:
                first = conn.recv(4096)
                self.received += first
                conn.sendall(b"\x20\x02\x00\x00")  # what a plain MQTT broker would answer
                conn.settimeout(3)
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                self.received += data
                conn.settimeout(3)  # then hang up, like a broker that refuses to answer
        except (OSError, ssl.SSLError):  # includes the idle timeout above
            return
        finally:
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()


def server_ctx(cert, tls11=False):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    if tls11:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx
