"""upyhub audit PORT against the simulated board (real mpremote): each finding, and a clean board."""
import base64
import datetime
import json
import os
import subprocess

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
    return {(f["severity"], f["code"]) for f in json.loads(res.stdout)}


def test_clean_board(sim_board):
    write_board(sim_board.flash)
    res = run_audit(sim_board, "--board", "unix")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout) == []
    text = subprocess.run([UPYHUB, "audit", sim_board.port], capture_output=True, text=True, timeout=300)
    assert text.returncode == 0 and text.stdout.strip() == "no findings"


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
    assert res.returncode == 0 and json.loads(res.stdout) == []


def test_port_without_board(tmp_path):
    res = subprocess.run([UPYHUB, "audit", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "cannot open" in res.stderr
