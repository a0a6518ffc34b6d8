"""X.509 device authentication as IoT Hub does it: the TLS layer takes any client certificate and the
hub decides. selfSigned = a thumbprint match (SHA-1 or SHA-256, primary or secondary), never a trust
anchor; certificateAuthority = a chain (intermediates sent by the device) to a registered CA, CN = device
id, valid now. Every refusal is CONNACK 5 and one log line saying why."""
import datetime
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hubdev import Device
from upyhub.hub import pki

pytestmark = pytest.mark.slow


def cli(hub, *args):
    out = subprocess.run([sys.executable, "-m", "upyhub", "hub", *args, "--data", str(hub.data_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def cert(cn, issuer=None, issuer_key=None, ca=False, days=30, start_days=-1, path_length=None):
    """A certificate as `openssl req -x509` (ca=True: basicConstraints CA:TRUE) or issued by issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now + datetime.timedelta(days=start_days))
         .not_valid_after(now + datetime.timedelta(days=days)))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
    return b.sign(issuer_key or key, hashes.SHA256()), key


def write(tmp_path, name, c, key, chain=()):
    crt, kp = pki.PKI.write_pair(c, key, tmp_path, name)
    if chain:  # the device sends its certificate followed by the intermediates
        crt.write_bytes(pki.cert_pem(c) + b"".join(pki.cert_pem(i) for i in chain))
    return crt, kp


def connack(hub, device_id, files):
    with Device(hub, device_id, None, cert=files) as d:
        return d.wait_connack()


def test_self_signed_ca_certificate_cannot_impersonate(mhub, tmp_path):
    """A selfSigned device whose certificate is a CA (openssl req -x509 output) signs CN=victim: refused."""
    attacker, attacker_key = cert("attacker", ca=True)
    crt = tmp_path / "attacker.pem"
    crt.write_bytes(pki.cert_pem(attacker))
    cli(mhub, "device", "add", "attacker", "--auth", "selfSigned", "--cert", str(crt))
    cli(mhub, "device", "add", "victim", "--auth", "certificateAuthority")
    assert connack(mhub, "attacker", write(tmp_path, "attacker", attacker, attacker_key)) == 0  # its own login
    forged, forged_key = cert("victim", issuer=attacker, issuer_key=attacker_key)
    assert connack(mhub, "victim", write(tmp_path, "forged", forged, forged_key)) == 5
    assert connack(mhub, "victim", write(tmp_path, "forged2", forged, forged_key, chain=[attacker])) == 5
    assert "refused 'victim'" in mhub.log() and "does not chain to a registered CA" in mhub.log()
    forged.verify_directly_issued_by(attacker)  # control: the forgery is validly signed by the attacker's CA


@pytest.mark.parametrize("which", ["sha1-primary", "sha256-secondary"])
def test_thumbprint_only_devices_connect(mhub, tmp_path, which):
    """Registered by thumbprint alone (no certificate on the hub): SHA-1 or SHA-256, primary or secondary."""
    device = "thumb-" + which
    c, key = cert(device)
    sha1, sha256 = pki.thumbprints(pki.der(c))
    other = pki.thumbprints(pki.der(cert("unrelated")[0]))[1]
    if which == "sha1-primary":
        args = ["--primary-thumbprint", sha1.lower()]
    else:
        args = ["--primary-thumbprint", other, "--secondary-thumbprint", sha256]
    cli(mhub, "device", "add", device, "--auth", "selfSigned", *args)
    files = write(tmp_path, device, c, key)
    assert connack(mhub, device, files) == 0
    impostor, impostor_key = cert(device)  # same CN, another key: another thumbprint
    assert connack(mhub, device, write(tmp_path, "impostor", impostor, impostor_key)) == 5
    assert "thumbprint does not match (neither primary nor secondary)" in mhub.log()


def test_service_sdk_shape_thumbprint_device(mhub, tmp_path):
    """A device created over the service API with x509Thumbprint only (create_device_with_x509's body)."""
    c, key = cert("svc-x509")
    mhub.service.put_device("svc-x509", auth="selfSigned", primary_thumbprint=pki.thumbprints(pki.der(c))[1])
    assert connack(mhub, "svc-x509", write(tmp_path, "svc-x509", c, key)) == 0


def test_ca_chain_through_intermediates(mhub, tmp_path):
    root, root_key = cert("factory root", ca=True, days=365)
    inter, inter_key = cert("factory intermediate", issuer=root, issuer_key=root_key, ca=True)
    leaf, leaf_key = cert("chained", issuer=inter, issuer_key=inter_key)
    (tmp_path / "root.pem").write_bytes(pki.cert_pem(root))
    cli(mhub, "device", "add", "chained", "--auth", "certificateAuthority")
    with_chain = write(tmp_path, "chained", leaf, leaf_key, chain=[inter])
    assert connack(mhub, "chained", with_chain) == 5  # the root is not registered yet
    cli(mhub, "ca", "--trust", str(tmp_path / "root.pem"))
    assert connack(mhub, "chained", with_chain) == 0
    assert connack(mhub, "chained", write(tmp_path, "nochain", leaf, leaf_key)) == 5  # intermediate not sent
    # an expired leaf, a leaf with another CN, an intermediate that is not a CA: refused
    old, old_key = cert("chained", issuer=inter, issuer_key=inter_key, days=-1, start_days=-10)
    assert connack(mhub, "chained", write(tmp_path, "old", old, old_key, chain=[inter])) == 5
    other, other_key = cert("someone-else", issuer=inter, issuer_key=inter_key)
    assert connack(mhub, "chained", write(tmp_path, "other", other, other_key, chain=[inter])) == 5
    fake_inter, fake_inter_key = cert("not a CA", issuer=root, issuer_key=root_key)
    leaf2, leaf2_key = cert("chained", issuer=fake_inter, issuer_key=fake_inter_key)
    assert connack(mhub, "chained", write(tmp_path, "leaf2", leaf2, leaf2_key, chain=[fake_inter])) == 5
    log = mhub.log()
    assert "client certificate CN is not the device id" in log
    assert log.count("does not chain to a registered CA") >= 3


def test_every_x509_refusal_is_logged(mhub, tmp_path):
    c, key = cert("sas-only-x")
    mhub.add_device("sas-only-x")
    before = mhub.log().count("refused 'sas-only-x'")
    assert connack(mhub, "sas-only-x", write(tmp_path, "sx", c, key)) == 5
    assert mhub.log().count("refused 'sas-only-x'") == before + 1
    assert "device uses SAS keys, not a certificate (CONNACK 5)" in mhub.log()
