"""X.509 client-certificate authentication: the device proves itself with a certificate and key
from its flash (no password, no key in secrets.json); a certificate the hub does not know is refused."""
import datetime
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from upyhub import sim


pytestmark = pytest.mark.slow


def self_signed(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, cert.public_bytes(serialization.Encoding.DER)


def register(hub, tmp_path, device_id, cert_pem):  # noqa: F811
    """`upyhub hub device add --auth selfSigned --cert`: thumbprint in the registry, cert as TLS trust."""
    pem = tmp_path / (device_id + ".crt")
    pem.write_bytes(cert_pem)
    subprocess.run([sys.executable, "-m", "upyhub", "hub", "device", "add", device_id, "--auth", "selfSigned",
                    "--cert", str(pem), "--data", str(hub.data_dir)], check=True, capture_output=True, timeout=60)


def flash_for(hub, tmp_path, device_id, cert_pem, key_pem):  # noqa: F811
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=hub.hostname, device_id=device_id, ca_pem=hub.ca_pem, port=hub.mqtt_port,
                    gateway=hub.host, auth="x509", x509={"cert": "device.crt", "key": "device.key"},
                    telemetry_interval=1)
    (flash / "device.crt").write_bytes(cert_pem)
    (flash / "device.key").write_bytes(key_pem)
    assert not (flash / "secrets.json").exists()
    return flash


def test_x509_device_connects_and_sends(hub, tmp_path, device):  # noqa: F811
    cert_pem, key_pem, _ = self_signed("x509-1")
    register(hub, tmp_path, "x509-1", cert_pem)
    dev = device(flash_for(hub, tmp_path, "x509-1", cert_pem, key_pem))
    dev.wait_for(r"iothub: connected to %s as x509-1 \(x509\)" % hub.hostname)
    dev.wait_for(r"app: telemetry 3 queued")
    assert "X.509 thumbprint" in hub.log()
    assert hub.service.invoke_method("x509-1", "ping", 5, timeout=30) == (200, {"pong": 5, "device": "x509-1"})


def test_unknown_certificate_refused(hub, tmp_path, device):  # noqa: F811
    registered, _, _ = self_signed("x509-2")
    register(hub, tmp_path, "x509-2", registered)
    other_pem, other_key, _ = self_signed("x509-3")  # another device's certificate (also trusted by TLS)
    register(hub, tmp_path, "x509-3", other_pem)
    dev = device(flash_for(hub, tmp_path, "x509-2", other_pem, other_key))
    dev.wait_for(r"iothub: CONNECT refused by the hub: not authorized \(CONNACK 5\)")
    assert "thumbprint does not match" in hub.log()
