"""Root certificate sets on the host: inspect a bundle, build the default Azure bundle,
and stage a set into a board's flash folder.

The flash format is the device's own: `lib/iothub/certstore.py` is imported here under
CPython, so a simulated board reads exactly what the host wrote, and a set the device would
refuse is refused here with the device's own message.
"""
import base64
import datetime
import hashlib
import json
import os
import pathlib
import sys
import warnings

import certifi
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from upyhub import files, paths
from upyhub.errors import UpyhubError, UsageError, network_reason

# What Azure IoT Hub chains to since 2023 (IOTHUB-FACTS.md). Taken from certifi's Mozilla
# bundle at build time; the fingerprints only check that the package gave the right ones.
AZURE_ROOTS = (
    ("DigiCert Global Root G2", "cb3ccbb76031e5e0138f8dd39a23f9de47ffc35e43c1144cea27d46a5ab1cb5f"),
    ("Microsoft RSA Root Certificate Authority 2017", "c741f70f4b2a8d88bf2e71c14122ef53ef10eba0cfa5e64cfa20f418853073e0"),
)


def device_modules():
    """(certstore, x509) of the device package in lib/, imported under CPython."""
    return paths.device_module("certstore"), paths.device_module("x509")


def load(data, name="input"):
    """PEM bundle or one DER certificate -> list of cryptography certificates."""
    try:
        if data[:1] == b"\x30":  # DER SEQUENCE; anything else is read as PEM
            return [x509.load_der_x509_certificate(data)]
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise UsageError("%s: not a PEM bundle or DER certificate" % name)
    return certs


def _cn(cert):
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.ORGANIZATION_NAME):
        attrs = cert.subject.get_attributes_for_oid(oid)
        if attrs:
            return str(attrs[0].value)
    return ""


def _is_ca(cert):
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def describe(cert, now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    not_after = cert.not_valid_after_utc
    return {
        "subject": cert.subject.rfc4514_string(),
        "cn": _cn(cert),
        "sha256": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        "notBefore": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "notAfter": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "daysLeft": (not_after - now).days,
        "ca": _is_ca(cert),
        "root": cert.issuer == cert.subject,
    }


def device_verdict(data):
    """None if the device would accept this set as roots, else its reason (one line)."""
    certstore, _ = device_modules()
    try:
        certstore.check(data)
    except ValueError as exc:
        return str(exc)
    return None


def inspect(path):
    data = files.read_file(path)
    certs = load(data, str(path))
    return {
        "file": str(path),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "certs": [describe(c) for c in certs],
        "device": device_verdict(data) or "accepted",
    }


def azure_bundle():
    """PEM bytes of the default Azure roots, selected from certifi's bundle by subject and checked by fingerprint."""
    with open(certifi.where(), "rb") as f, warnings.catch_warnings():
        # Some other roots in Mozilla's store have non-RFC serials; they are not used here.
        warnings.simplefilter("ignore")
        certs = x509.load_pem_x509_certificates(f.read())
    out = []
    for name, fp in AZURE_ROOTS:
        found = [c for c in certs if _cn(c) == name]
        if len(found) != 1:
            raise UsageError("certifi %s has %d certificates named %r (expected 1)" % (certifi.__version__, len(found), name))
        got = hashlib.sha256(found[0].public_bytes(Encoding.DER)).hexdigest()
        if got != fp:
            raise UsageError("certifi's %r has fingerprint %s, not the expected %s" % (name, got, fp))
        out.append(found[0].public_bytes(Encoding.PEM))
    return b"".join(out)


def certs_dir(flash):
    """The flash folder's certificate store (config.json's certs_dir, default "certs")."""
    from upyhub import sim

    flash = pathlib.Path(flash)
    if not flash.is_dir():
        raise UsageError("flash folder not found: %s" % flash)
    cfg = sim.read_config(flash) or {}
    name = cfg.get("certs_dir") or "certs"
    if not isinstance(name, str) or name.startswith("/") or ".." in name.split("/"):
        raise UsageError("config.json certs_dir must be a relative folder name")
    return flash / name


# Run by MicroPython in the board's confinement (sim.run_on_flash): the device's own certstore writes the set,
# with the flash folder as its root, so a link a board left there leads nowhere on the host.
_STORE_WRITE = """
import json, binascii
from iothub import certstore
data = binascii.a2b_base64(%(data)r)
try:
    s = certstore.Store(%(dir)r)
    m = s.install_active(data, source=%(source)r) if %(active)r else s.stage(data, %(sha)r, source=%(source)r)
    print('UPYHUB-STORE ' + json.dumps(m))
except ValueError as e:
    print('UPYHUB-REFUSED ' + str(e))
"""


def _store_write(flash, data, active, source):
    from upyhub import sim

    why = device_verdict(data)  # the device's own rules, here first: a clear message, nothing written
    if why:
        raise UsageError("refused: %s" % why)
    flash = pathlib.Path(flash)
    if not flash.is_symlink():
        flash.mkdir(parents=True, exist_ok=True)  # a new simulated board's flash folder
    rel = certs_dir(flash).relative_to(flash).as_posix()
    code = _STORE_WRITE % {"data": base64.b64encode(data).decode(), "dir": "/" + rel, "source": source,
                           "active": bool(active), "sha": hashlib.sha256(data).hexdigest()}
    proc = sim.run_on_flash(flash, code)
    for line in proc.stdout.splitlines():
        if line.startswith("UPYHUB-STORE "):
            return json.loads(line.split(" ", 1)[1])
        if line.startswith("UPYHUB-REFUSED "):
            raise UsageError("refused: %s" % line.split(" ", 1)[1])
    last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
    raise UpyhubError("could not write the root set into %s: %s" % (flash, last[:200]))


def stage_local(flash, data, source="local"):
    """Write a staged set into a flash folder (the simulated board tries it on its next connection)."""
    return _store_write(flash, data, False, source)


def install_local(flash, data, source="provision"):
    """Provisioning's first write: the active set (the old one, if any, becomes the fallback)."""
    return _store_write(flash, data, True, source)


METHOD = "updateRootCerts"


def push_payload(data):
    """The updateRootCerts payload: PEM text as is, or one DER certificate as base64, with its SHA-256."""
    digest = hashlib.sha256(data).hexdigest()
    if data[:1] == b"\x30":
        return {"der": base64.b64encode(data).decode(), "sha256": digest}
    try:
        return {"pem": data.decode("ascii"), "sha256": digest}
    except UnicodeDecodeError:
        raise UsageError("the PEM file is not ASCII text")


def push(service, devices, data, timeout=30):
    """Invoke updateRootCerts on each device through the hub -> [(device, status, body)].

    The set is checked here first with the device's own rules, so a bad file never leaves the host.
    A device that is offline (404) or does not answer (504) is reported, not raised.
    """
    from upyhub.hub.client import ServiceError

    why = device_verdict(data)
    if why:
        raise UsageError("refused before pushing: %s" % why)
    payload = push_payload(data)
    out = []
    for device in devices:
        try:
            status, body = service.invoke_method(device, METHOD, payload, timeout)
        except ServiceError as exc:
            status, body = exc.status, {"status": "unreachable", "message": exc.message}
        except OSError as exc:
            raise UpyhubError("cannot reach the hub's service API: %s" % network_reason(exc))
        out.append((device, status, body))
    return out


# Runs on the board (mpremote exec) after the file was copied to INCOMING: the board's own
# certstore validates and stages it, exactly as for an over-the-air push.
INCOMING = "/roots-incoming.tmp"
_STAGE_ON_BOARD = """
import json, os
try:
    from iothub import certstore
except ImportError:
    certstore = None
    print("UPYHUB-NOFIRMWARE")
if certstore:
    d = %r
    if not d:
        try:
            d = json.load(open("/config.json")).get("certs_dir") or "certs"
        except (OSError, ValueError):
            d = "certs"
    try:
        data = open(%r, "rb").read()
        m = certstore.Store("/" + d).stage(data, %r, source="mpremote")
        print("UPYHUB-STAGED", json.dumps({"seq": m["seq"], "cns": [c["cn"] for c in m["certs"]], "dir": d}))
    except ValueError as e:
        print("UPYHUB-REFUSED", e)
    except OSError as e:
        print("UPYHUB-REFUSED could not write the board's flash:", e)
try:
    os.remove(%r)
except OSError:
    pass
"""


def stage_board(port, data, certs_dir=None, timeout=120):
    """Stage a set on a board over mpremote (copy, then the board's certstore stages it) -> {"seq","cns","dir"}."""
    import subprocess
    import tempfile

    why = device_verdict(data)
    if why:
        raise UsageError("refused before copying: %s" % why)
    digest = hashlib.sha256(data).hexdigest()
    code = _STAGE_ON_BOARD % (certs_dir, INCOMING, digest, INCOMING)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "roots")
        with open(src, "wb") as f:
            f.write(data)
        cmd = [sys.executable, "-m", "mpremote", "connect", port, "cp", src, ":" + INCOMING, "+", "exec", code]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UpyhubError("the board on %s did not answer within %d s" % (port, timeout))
    out = proc.stdout
    for line in out.splitlines():
        if line.startswith("UPYHUB-STAGED "):
            return json.loads(line.split(" ", 1)[1])
        if line.startswith("UPYHUB-REFUSED "):
            raise UpyhubError("the board refused it: %s" % line.split(" ", 1)[1])
        if line.startswith("UPYHUB-NOFIRMWARE"):
            raise UpyhubError("the board has no iothub package in /lib: install the firmware first")
    last = (proc.stderr.strip() or out.strip() or "no output").splitlines()[-1]
    raise UpyhubError("mpremote on %s failed: %s" % (port, last[:200]))
