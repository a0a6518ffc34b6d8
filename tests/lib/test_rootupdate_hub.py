"""Root rotation rehearsed against the local hub, the way a user does it by hand:

    upyhub hub rotate-ca                       # the hub gains CA-2 (not served yet)
    upyhub certs push --device rot1 ca-2.pem   # through the hub, into the device's staged slot
    upyhub hub rotate-ca --activate            # the hub switches to CA-2 (restarted here to drop connections)

The device is the real Session (lib/iothub/session.py) with rootupdate.Watch as its app glue, on the
unix port; everything is checked through the hub's service API (twin rootCerts, telemetry).
"""
import json
import os
import subprocess
import sys
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import polling
from certhelpers import ROOT, make_cert, sha
from upyhub import sim

pytestmark = pytest.mark.slow

DRIVER = """
import time
from iothub import config, transport, rootupdate
from iothub.session import Session
cfg, secrets = config.load(%r)
certs = transport.roots_source(%r, cfg["certs_dir"])
for p in certs.problems:
    print("certs:", p)
s = Session(cfg, secrets, certs, root=%r)
w = rootupdate.Watch(s, certs, cfg["roots_expiry_warn_days"])
def on_method(name, payload):
    return w.method(name, payload) or (404, {"error": "no method " + name})
s.on_method = on_method
seq = 0
due = time.ticks_ms()
while True:
    if time.ticks_diff(time.ticks_ms(), due) >= 0:
        seq += 1
        s.send('{"seq":%%d}' %% seq, {"seq": seq})
        due = time.ticks_add(due, 250)
    w.poll()
    s.poll(50)
"""


def fingerprint(pem):
    import hashlib

    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()


def wait_until(fn, timeout=90, what="condition"):
    return polling.wait_until(fn, timeout, what, ignore=Exception)  # the hub may be restarting


class Board:
    def __init__(self, flash):
        root = str(flash)
        env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(ROOT / "lib"), str(ROOT / "build" / "umqtt")]))
        self.proc = subprocess.Popen([str(ROOT / "build" / "micropython"), "-c", DRIVER % (root, root, root)],
                                     env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def log(self):
        return "\n".join(self.lines)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def upyhub(*args):
    return subprocess.run([sys.executable, "-m", "upyhub", *map(str, args)], capture_output=True, text=True, timeout=180)


def reported(hub, device):  # noqa: F811
    return hub.service.get_twin(device)["properties"]["reported"].get("rootCerts")


def test_full_migration_through_the_hub(hub, tmp_path):  # noqa: F811
    ca1_pem = hub.ca_pem
    key = hub.add_device("rot1")
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=hub.hostname, device_id="rot1", device_key=key, ca_pem=ca1_pem,
                    port=hub.mqtt_port, gateway=hub.host, retry_cap=2)
    board = Board(flash)
    try:
        rc = wait_until(lambda: reported(hub, "rot1"), what="rootCerts reported\n" + board.log())
        assert [c["sha256"] for c in rc["active"]["certs"]] == [fingerprint(ca1_pem)]
        # (null in a reported patch deletes the property, as on Azure: no staged set, no "staged")
        assert rc.get("staged") is None and rc["expiryWarning"] is False

        # The hub gains CA-2; the user pushes it to the device through the hub.
        assert upyhub("hub", "rotate-ca", "--data", hub.data_dir).returncode == 0
        ca2_path = upyhub("hub", "ca", "--pending", "--data", hub.data_dir).stdout.strip()
        ca2_pem = open(ca2_path, "rb").read()
        proc = upyhub("certs", "push", "--data", hub.data_dir, "--device", "rot1", ca2_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("rot1: 200 staged: staged 1 root(s)")
        rc = wait_until(lambda: (reported(hub, "rot1") or {}).get("staged"), what="staged reported")
        assert rc["sha256"] == sha(ca2_pem)

        # A bad push through the hub is refused by the device; the host refuses it before sending.
        leaf = make_cert("leaf", ca=False, issuer=make_cert("x"))
        status, body = hub.service.invoke_method("rot1", "updateRootCerts", {"pem": leaf.pem.decode(), "sha256": sha(leaf.pem)}, 30)
        assert status == 400 and "not a CA certificate" in body["message"]
        (tmp_path / "leaf.pem").write_bytes(leaf.pem)
        proc = upyhub("certs", "push", "--data", hub.data_dir, "--device", "rot1", tmp_path / "leaf.pem")
        assert proc.returncode == 2 and "refused before pushing" in proc.stderr

        # The hub switches to CA-2 and drops every connection: the device comes back with CA-2.
        seq_before = max(int(m["properties"]["seq"]) for m in hub.service.telemetry("rot1"))
        assert upyhub("hub", "rotate-ca", "--activate", "--data", hub.data_dir).returncode == 0
        hub.restart()
        rc = wait_until(lambda: (lambda r: r if r and r.get("fallback") else None)(reported(hub, "rot1")),
                        what="promotion reported\n" + board.log())
        assert [c["sha256"] for c in rc["active"]["certs"]] == [fingerprint(ca2_pem)]
        assert rc["fallback"]["fingerprints"] == [fingerprint(ca1_pem)] and rc.get("staged") is None
        assert json.loads((flash / "certs" / "active" / "manifest").read_text().splitlines()[0])["sha256"] == sha(ca2_pem)

        # No telemetry lost across the switch: every sequence number up to well past it reached the hub.
        target = seq_before + 8
        msgs = wait_until(lambda: (lambda ms: ms if max(int(m["properties"]["seq"]) for m in ms) >= target else None)(
            hub.service.telemetry("rot1")), what="telemetry after the switch")
        seqs = {int(m["properties"]["seq"]) for m in msgs}
        assert set(range(1, target + 1)) <= seqs
    finally:
        board.stop()
    assert "TLS refused" not in board.log()  # the staged set was tried only once the hub served CA-2


def test_push_to_an_offline_device_is_reported(hub, tmp_path):  # noqa: F811
    hub.add_device("offline1")
    root = make_cert("Some Root")
    (tmp_path / "r.pem").write_bytes(root.pem)
    proc = upyhub("certs", "push", "--data", hub.data_dir, "--device", "offline1", tmp_path / "r.pem")
    assert proc.returncode == 1
    assert proc.stdout.startswith("offline1: 404 unreachable")
