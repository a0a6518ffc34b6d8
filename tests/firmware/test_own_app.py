"""An app that is not the sample: the README's minimal app, booted by the real firmware (main.py,
.mpy) in place of firmware/app.py. With no code of its own for it, it gets root rotation (the
README's rehearsal against the local hub, ending with the new root active and the old one as
fallback), the `rootCerts` reported property and the expiry alert: they are the library's."""
import json
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certhelpers import make_cert, sha
from fwtools import provision, wait_until

pytestmark = pytest.mark.slow

# The README's "Writing your own app", verbatim.
MINIMAL_APP = '''
import time

def run(session, board, cfg):
    n, due = 0, time.ticks_ms()
    while True:
        if time.ticks_diff(time.ticks_ms(), due) >= 0:
            n += 1
            session.send({"n": n}, {"n": n})
            due = time.ticks_add(due, 250)
        session.poll(50)
'''


@pytest.fixture
def own_app(tmp_path):
    d = tmp_path / "own-app"
    d.mkdir()
    (d / "app.py").write_text(MINIMAL_APP)
    return d


def readme_app():
    from fwtools import ROOT

    return (ROOT / "README.md").read_text()


def test_readme_shows_this_app():
    assert MINIMAL_APP.strip() in readme_app()


def fingerprint(pem):
    import hashlib

    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()


def upyhub(*args):
    return subprocess.run([sys.executable, "-m", "upyhub", *map(str, args)], capture_output=True, text=True, timeout=180)


def reported(hub, device_id, name):
    return hub.service.get_twin(device_id)["properties"]["reported"].get(name)


def seqs(hub, device_id):
    return {int(m["properties"]["n"]) for m in hub.service.telemetry(device_id)}


def test_full_root_migration_with_an_app_of_its_own(hub, tmp_path, device, own_app):  # noqa: F811
    ca1_pem = hub.ca_pem
    provision(hub, tmp_path / "flash", "own-1", retry_cap=2)
    dev = device(tmp_path / "flash", path_extra=[own_app])
    dev.wait_for(r"iothub: connected ")
    rc = wait_until(lambda: reported(hub, "own-1", "rootCerts"), what="rootCerts reported\n" + dev.log())
    assert [c["sha256"] for c in rc["active"]["certs"]] == [fingerprint(ca1_pem)]
    assert rc.get("staged") is None and rc["expiryWarning"] is False

    # The hub gains CA-2; the user pushes it to the device through the hub (README's rehearsal).
    assert upyhub("hub", "rotate-ca", "--data", hub.data_dir).returncode == 0
    ca2_path = upyhub("hub", "ca", "--pending", "--data", hub.data_dir).stdout.strip()
    ca2_pem = open(ca2_path, "rb").read()
    proc = upyhub("certs", "push", "--data", hub.data_dir, "--device", "own-1", ca2_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("own-1: 200 staged: staged 1 root(s)")
    rc = wait_until(lambda: (reported(hub, "own-1", "rootCerts") or {}).get("staged"), what="staged reported")
    assert rc["sha256"] == sha(ca2_pem)

    # A bad set is refused by the device (through the hub) and by the host before it is sent.
    leaf = make_cert("leaf", ca=False, issuer=make_cert("x"))
    status, body = hub.service.invoke_method("own-1", "updateRootCerts", {"pem": leaf.pem.decode(), "sha256": sha(leaf.pem)}, 30)
    assert status == 400 and "not a CA certificate" in body["message"]
    (tmp_path / "leaf.pem").write_bytes(leaf.pem)
    proc = upyhub("certs", "push", "--data", hub.data_dir, "--device", "own-1", tmp_path / "leaf.pem")
    assert proc.returncode == 2 and "refused before pushing" in proc.stderr
    # the app's own methods: it has none, so anything else is 404
    assert hub.service.invoke_method("own-1", "ping", None, 30)[0] == 404

    # The hub switches to CA-2 and drops every connection: the device comes back with CA-2.
    before = max(seqs(hub, "own-1"))
    assert upyhub("hub", "rotate-ca", "--activate", "--data", hub.data_dir).returncode == 0
    hub.restart()
    rc = wait_until(lambda: (lambda r: r if r and r.get("fallback") else None)(reported(hub, "own-1", "rootCerts")),
                    what="promotion reported\n" + dev.log())
    assert [c["sha256"] for c in rc["active"]["certs"]] == [fingerprint(ca2_pem)]
    assert rc["fallback"]["fingerprints"] == [fingerprint(ca1_pem)] and rc.get("staged") is None
    manifest = (tmp_path / "flash" / "certs" / "active" / "manifest").read_text().splitlines()[0]
    assert json.loads(manifest)["sha256"] == sha(ca2_pem)

    # No telemetry lost across the switch.
    target = before + 8
    wait_until(lambda: max(seqs(hub, "own-1")) >= target, what="telemetry after the switch")
    assert set(range(1, target + 1)) <= seqs(hub, "own-1")
    assert "TLS refused" not in dev.log()  # the staged set was tried only once the hub served CA-2


def test_expiry_alert_with_an_app_of_its_own(hub, tmp_path, device, own_app):  # noqa: F811
    # The hub's CA is valid for ten years (3650 days): a warning window one day longer makes it "expiring".
    provision(hub, tmp_path / "flash", "own-2", roots_expiry_warn_days=3651)
    dev = device(tmp_path / "flash", path_extra=[own_app])
    dev.wait_for(r"iothub: root certificates expire within 3651 days: alert sent")
    alert = wait_until(lambda: [m for m in hub.service.telemetry("own-2")
                                if m["properties"].get("alert") == "rootCertsExpiring"], what="expiry alert")
    body = json.loads(alert[0]["body"])
    assert body["warnDays"] == 3651
    assert [c["sha256"] for c in body["rootCertsExpiring"]] == [fingerprint(hub.ca_pem)]
    assert 3640 < body["rootCertsExpiring"][0]["daysLeft"] < 3651
    rc = wait_until(lambda: reported(hub, "own-2", "rootCerts"), what="rootCerts")
    assert rc["expiryWarning"] is True and rc["warnDays"] == 3651
