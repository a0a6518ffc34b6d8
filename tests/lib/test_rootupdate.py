"""lib/iothub/rootupdate.py on the unix port: the updateRootCerts method, rootCerts report, expiry watch."""
import base64
import datetime
import json

from certhelpers import days, make_cert, mp_json, sha, tree
from upyhub.certs import device_modules

certstore, _ = device_modules()

HANDLE = """
store = certstore.Store(%r)
out = []
for raw in %r:
    status, body = rootupdate.handle(store, raw)
    out.append([status, body])
print(json.dumps([out, store.status()]))
"""


def provisioned(tmp_path, data):
    d = tmp_path / "certs"
    certstore.Store(str(d)).install_active(data)
    return d


def call(run_mp, d, payloads):
    # Payloads go to the device as the raw JSON text a direct method delivers.
    raws = [p if isinstance(p, str) else json.dumps(p) for p in payloads]
    return mp_json(run_mp, HANDLE % (str(d), raws))


def test_pem_and_der_payloads_are_staged_with_a_clear_reply(run_mp, tmp_path, cas):
    ca1, ca2 = cas
    d = provisioned(tmp_path, ca1.cert_pem.bytes())
    new = make_cert("New Root")
    pem_text = new.pem.decode()
    (out, status) = call(run_mp, d, [{"pem": pem_text, "sha256": sha(new.pem)}])
    code, body = out[0]
    assert code == 200 and body["status"] == "staged"
    assert body["certs"] == [{"cn": "New Root", "sha256": new.sha256,
                              "notAfter": new.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")}]
    assert "after 3 failed attempts" in body["message"]
    assert status["staged"]["sha256"] == sha(new.pem) and status["staged"]["trials"] == 0
    # DER as base64 (uppercase digest accepted), replacing the staged set.
    der = make_cert("DER Root")
    (out, status) = call(run_mp, d, [{"der": base64.b64encode(der.der).decode(), "sha256": der.sha256.upper()}])
    assert out[0][0] == 200 and out[0][1]["certs"][0]["sha256"] == der.sha256
    assert (d / "staged" / "roots.der").read_bytes() == der.der
    assert status["staged"]["seq"] == body["seq"] + 1
    assert status["active"]["seq"] == 1  # the active set is not touched by staging


def test_bad_pushes_are_refused_and_the_active_set_is_untouched(run_mp, tmp_path, cas):
    ca1, _ = cas
    d = provisioned(tmp_path, ca1.cert_pem.bytes())
    before = tree(d)
    root = make_cert("R")
    leaf = make_cert("leaf", ca=False, issuer=root)
    old = make_cert("Old", not_before=days(-100), not_after=days(-2))
    big = root.pem * 40
    payloads = [
        ({"pem": leaf.pem.decode(), "sha256": sha(leaf.pem)}, "not a CA certificate"),
        ({"pem": "garbage\n" * 5, "sha256": sha(b"garbage\n" * 5)}, "no CERTIFICATE block"),
        ({"der": base64.b64encode(b"\x30\x03\x02\x01\x00").decode(), "sha256": sha(b"\x30\x03\x02\x01\x00")}, "not an X.509"),
        ({"pem": old.pem.decode(), "sha256": sha(old.pem)}, "expired on"),
        ({"pem": root.pem.decode(), "sha256": sha(root.pem + b"\n")}, "SHA-256 mismatch"),
        ({"pem": big.decode(), "sha256": sha(big)}, "more than the limit of 16384"),
        ({"der": base64.b64encode(big).decode(), "sha256": sha(big)}, "more than the limit of 16384"),
        ({"pem": root.pem.decode()}, '"sha256"'),
        ({"pem": root.pem.decode(), "der": "AAAA", "sha256": root.sha256}, "exactly one of"),
        ({"der": "not base64!", "sha256": root.sha256}, "not base64"),
        ({"der": base64.b64encode(root.pem).decode(), "sha256": sha(root.pem)}, 'send PEM text as "pem"'),
        ({"pem": 5, "sha256": root.sha256}, '"pem" must be a string'),
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
    ]
    out, status = call(run_mp, d, [p for p, _ in payloads])
    for (payload, want), (code, body) in zip(payloads, out):
        assert code == 400 and body["status"] == "refused", (want, body)
        assert want in body["message"], (want, body)
        assert "\n" not in body["message"]
    assert status["staged"] is None
    assert tree(d) == before


def test_the_active_set_pushed_again_is_acknowledged_without_a_write(run_mp, tmp_path, cas):
    ca1, _ = cas
    data = ca1.cert_pem.bytes()
    d = provisioned(tmp_path, data)
    before = tree(d)
    out, status = call(run_mp, d, [{"pem": data.decode(), "sha256": sha(data)}])
    assert out[0][0] == 200 and out[0][1]["status"] == "active"
    assert tree(d) == before


def test_a_flash_that_cannot_be_written_is_a_500(run_mp, tmp_path):
    (tmp_path / "notadir").write_text("x")
    root = make_cert("R")
    out, _ = call(run_mp, tmp_path / "notadir" / "certs", [{"pem": root.pem.decode(), "sha256": sha(root.pem)}])
    code, body = out[0]
    assert code == 500 and body["status"] == "error" and "could not write the staged set to flash" in body["message"]


REPORT = """
store = certstore.Store(%r)
print(json.dumps([rootupdate.report(store, %d), rootupdate.expiring(store, %d), rootupdate.expiring(store, 30, now=0)]))
"""


def test_root_certs_report_and_expiry_watch(run_mp, tmp_path):
    soon = make_cert("Soon Root", not_after=days(10) + datetime.timedelta(hours=1))
    later = make_cert("Later Root", not_after=days(400))
    d = provisioned(tmp_path, later.pem + soon.pem)
    report, warn30, unset = mp_json(run_mp, REPORT % (str(d), 30, 30))
    assert [c["sha256"] for c in report["active"]["certs"]] == [later.sha256, soon.sha256]
    assert report["earliestExpiry"] == soon.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert report["expiresInDays"] == 10 and report["expiryWarning"] is True and report["warnDays"] == 30
    assert [(e["cn"], e["daysLeft"]) for e in warn30] == [("Soon Root", 10)]
    assert unset == []  # an unset clock cannot judge expiry: no false alarm
    report, warn5, _ = mp_json(run_mp, REPORT % (str(d), 5, 5))
    assert report["expiryWarning"] is False and warn5 == []
    json.dumps(report)  # the twin takes it as is
    assert len(json.dumps(report)) < 2048


OVERSIZED = """
import gc
line, head, tail = %r, %r, %r
gc.collect()
raw = bytearray(len(head) + %d * len(line) + len(tail))  # the request, in one piece as the MQTT layer has it
mv = memoryview(raw)
mv[:len(head)] = head
at = len(head)
while at < len(raw) - len(tail):
    mv[at:at + len(line)] = line
    at += len(line)
mv[at:] = tail
mv = None
store = certstore.Store(%r)
before = store.status()
gc.collect()
free = gc.mem_free()
status, body = rootupdate.handle(store, raw)
print(json.dumps([len(raw), free, status, body, store.status() == before]))
"""


def test_an_oversized_push_is_refused_by_its_size_before_it_is_parsed(run_mp, tmp_path, cas):
    # A ~100 KB request (a bundle far over the store's 16 KB) in a heap that holds it but could not hold
    # the PEM text parsing it would make: refused for its size, not for want of memory; nothing changes.
    ca1, _ = cas
    d = provisioned(tmp_path, ca1.cert_pem.bytes())
    before = tree(d)
    root = make_cert("Bundle Root")
    line = json.dumps(root.pem.decode())[1:-1].encode()  # one root as it stands in the JSON string
    copies = 100 * 1024 // len(line) + 1
    head, tail = b'{"pem": "', b'", "sha256": "%s"}' % sha(root.pem * copies).encode()
    size, free, status, body, unchanged = mp_json(
        run_mp, OVERSIZED % (line, head, tail, copies, str(d)), mpy=True, heapsize="160K")
    assert size > 100 * 1024 and free < size  # no room for the text a parse would make
    assert status == 400 and body["status"] == "refused", body
    assert body["message"] == "root certificate payload is %d bytes, more than the limit of %d" % (
        size, 2 * 16384 + 256), body
    assert unchanged and tree(d) == before
