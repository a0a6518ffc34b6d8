"""lib/iothub/x509.py on the unix port, checked against cryptography's reading of the same certificates."""
import calendar
import datetime
import hashlib
import os
import warnings

import certifi
from cryptography import x509 as cx509
from cryptography.hazmat.primitives.serialization import Encoding

from certhelpers import make_cert, mp_json


def host_view(cert):
    try:
        ca = cert.extensions.get_extension_for_class(cx509.BasicConstraints).value.ca
    except cx509.ExtensionNotFound:
        ca = False
    return {
        "sha256": hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        "not_after": calendar.timegm(cert.not_valid_after_utc.utctimetuple()),
        "not_before": calendar.timegm(cert.not_valid_before_utc.utctimetuple()),
        "ca": ca,
        "root": cert.issuer == cert.subject,
    }


DUMP = """
certs = x509.load(open(%r, "rb").read())
print(json.dumps([{"cn": c.cn, "sha256": c.sha256, "not_after": c.not_after, "not_before": c.not_before,
                   "ca": c.is_ca, "root": c.self_issued} for c in certs]))
"""


def test_reads_every_root_of_the_mozilla_bundle_like_cryptography(run_mp, tmp_path):
    # 100+ real roots of every vintage: RSA/EC, UTCTime/GeneralizedTime, with and without keyUsage.
    path = certifi.where()
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few Mozilla roots have non-RFC serial numbers
        host = [host_view(c) for c in cx509.load_pem_x509_certificates(f.read())]
    dev = mp_json(run_mp, DUMP % path)
    assert len(dev) == len(host) > 100
    for d, h in zip(dev, host):
        assert d["sha256"] == h["sha256"]
        assert (d["not_after"], d["not_before"]) == (h["not_after"], h["not_before"]), d["cn"]
        assert (d["ca"], d["root"]) == (h["ca"], h["root"]), d["cn"]
    names = {d["cn"] for d in dev}
    assert {"DigiCert Global Root G2", "Microsoft RSA Root Certificate Authority 2017"} <= names


def test_leaf_intermediate_and_dates(run_mp, tmp_path):
    root = make_cert("Root A")
    inter = make_cert("Intermediate B", issuer=root)
    leaf = make_cert("leaf.example", ca=False, issuer=inter)
    late = make_cert("Late Root", not_after=datetime.datetime(2061, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc))
    old = make_cert("Old Root", not_before=datetime.datetime(1999, 1, 1, tzinfo=datetime.timezone.utc),
                    not_after=datetime.datetime(2001, 2, 3, tzinfo=datetime.timezone.utc))
    bundle = tmp_path / "b.pem"
    bundle.write_bytes(b"# comment lines are allowed, as in certifi\n" + b"".join(c.pem for c in (root, inter, leaf, late, old)))
    dev = mp_json(run_mp, DUMP % str(bundle))
    assert [d["cn"] for d in dev] == ["Root A", "Intermediate B", "leaf.example", "Late Root", "Old Root"]
    assert [(d["ca"], d["root"]) for d in dev] == [(True, True), (True, False), (False, False), (True, True), (True, True)]
    for d, c in zip(dev, (root, inter, leaf, late, old)):
        assert d == dict(host_view(c.cert), cn=d["cn"])
    # GeneralizedTime after 2049 and UTCTime before 2000 both decode to the right second.
    assert dev[3]["not_after"] == calendar.timegm((2061, 3, 4, 5, 6, 7))
    assert dev[4]["not_before"] == calendar.timegm((1999, 1, 1, 0, 0, 0))
    # One DER certificate on its own.
    der = tmp_path / "one.der"
    der.write_bytes(root.der)
    assert mp_json(run_mp, DUMP % str(der))[0]["sha256"] == root.sha256


def test_key_usage_without_cert_sign_is_seen(run_mp, tmp_path):
    c = make_cert("CA without keyCertSign", key_cert_sign=False)
    p = tmp_path / "c.pem"
    p.write_bytes(c.pem)
    out = mp_json(run_mp, "c = x509.load(open(%r,'rb').read())[0]\nprint(json.dumps([c.is_ca, c.can_sign]))" % str(p))
    assert out == [True, False]


def test_malformed_input_is_a_clean_value_error(run_mp, tmp_path):
    # Every truncation and every single-byte corruption of a real certificate: ValueError or a parse, never a crash.
    root = make_cert("Fuzz Root")
    p = tmp_path / "c.der"
    p.write_bytes(root.der)
    code = """
der = open(%r, "rb").read()
bad = 0
for n in range(len(der)):
    try:
        x509.parse(der[:n])
    except ValueError as e:
        assert str(e).startswith("not an X.509 certificate"), e
        bad += 1
flips = 0
for i in range(len(der)):
    b = bytearray(der)
    b[i] ^= 0xA5
    try:
        x509.parse(bytes(b))
    except ValueError:
        flips += 1
msgs = []
for data in (b"", b"garbage that is no certificate", b"\\x30\\x82\\xff\\xff", b"-----BEGIN CERTIFICATE-----\\nQUJD\\n",
             b"-----BEGIN PRIVATE KEY-----\\nQUJD\\n-----END PRIVATE KEY-----\\n",
             b"-----BEGIN CERTIFICATE-----\\n!!!!\\n-----END CERTIFICATE-----\\n",
             b"-----BEGIN CERTIFICATE-----\\nQUJD\\n-----END CERTIFICATE-----\\n"):
    try:
        x509.load(data)
        msgs.append(None)
    except ValueError as e:
        msgs.append(str(e))
print(json.dumps([bad, len(der), flips, msgs]))
""" % str(p)
    bad, n, flips, msgs = mp_json(run_mp, code)
    assert bad == n  # every strict prefix is refused
    assert 0 < flips < n  # structural bytes are caught; key and signature bytes are not X.509's business
    assert None not in msgs
    assert "PRIVATE KEY" in msgs[4] and "only CERTIFICATE" in msgs[4]
    assert "no END line" in msgs[3]
    assert "base64" in msgs[5]


def test_iso_and_civil_dates_match_the_host(run_mp):
    stamps = [0, 951782400, 951868799, 1700000000, 2147483648, 32503680000] + [int.from_bytes(os.urandom(5), "big") % 253402300800 for _ in range(50)]
    out = mp_json(run_mp, "print(json.dumps([x509.iso(t) for t in %r]))" % stamps)
    want = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") for t in stamps]
    assert out == want


def test_compiled_under_a_64k_heap(run_mp, mpy_lib, tmp_path):  # noqa: F811
    # The board build: .mpy modules, small heap, the default Azure bundle (4096-bit RSA root inside).
    import subprocess
    import sys

    out = tmp_path / "azure.pem"
    subprocess.run([sys.executable, "-m", "upyhub", "certs", "bundle", "--out", str(out)], check=True, capture_output=True)
    dev = mp_json(run_mp, DUMP % str(out), mpy=True, heapsize="64K", path_extra=(mpy_lib,))
    assert [d["cn"] for d in dev] == ["DigiCert Global Root G2", "Microsoft RSA Root Certificate Authority 2017"]
    assert all(d["ca"] and d["root"] for d in dev)
