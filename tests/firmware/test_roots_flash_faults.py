"""Flash that cannot be written: the session (lib/iothub) on the unix port, its files on a real littlefs image,
against the local hub over TLS. A staged root set that fails its TLS trials on a flash that cannot record them
(mounted read-only, or full): the trials are counted in RAM as well, so the bad set is given up after 3 attempts
and the device connects with its working active set; the flash's refusal is logged once, by name. A flash too
full for the outbox: the board still connects and sends, its telemetry queued in RAM."""
import os
import re
import subprocess
import time

import pytest

from certhelpers import sha
from flashimage import IMAGE
from fwtools import ROOT

# Board-side: write /flash/junk until the littlefs has no data block left; -> the 512-byte writes it took.
FILL_DATA = """
def fill_data():
    n = 0
    try:
        with open("/flash/junk", "wb") as f:
            while True:
                f.write(bytes(512))
                n += 1
    except OSError:
        pass
    return n
"""

pytestmark = pytest.mark.slow

MP = str(ROOT / "build" / "micropython")

PREPARE = IMAGE + FILL_DATA + """
mount("VfsLfs2", %r, mkfs=True)
from iothub import certstore
s = certstore.Store("/flash/certs")
s.install_active(open(%r, "rb").read())
s.stage(open(%r, "rb").read(), %r)
if %r:  # fill what is left: data blocks, then the metadata small files would go into
    n = fill_data()
    for d in ("/flash", "/flash/certs"):  # littlefs keeps small files inline, in each folder's metadata
        try:
            while True:
                with open("%%s/f%%d" %% (d, n), "wb") as f:
                    f.write(bytes(64))
                n += 1
        except OSError as e:
            err = e.args[0]
    print("full", err, n)
print("ok")
"""

# The session on the flash, a reading every 0.5 s (after code that mounts it and sets cfg and secrets).
SESSION = """
from iothub.session import Session
import time
s = Session(cfg, secrets, root="/flash")
n, due = 0, time.ticks_ms()
while True:
    if time.ticks_diff(time.ticks_ms(), due) >= 0:
        n += 1
        s.send({"n": n})
        due = time.ticks_add(due, 500)
    s.poll(50)
"""

RUN = IMAGE + """
mount("VfsLfs2", %r, readonly=%r)
from iothub import config
cfg, secrets = config.check(%r, %r)
""" + SESSION


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_bad_staged_set_is_given_up_without_flash_writes(hub, tmp_path, pki, fault):
    key = hub.add_device("ff-1")
    (tmp_path / "good.pem").write_bytes(hub.ca_pem)
    bad = pki["other"].cert_pem.bytes()  # a root the hub's certificate does not chain to
    (tmp_path / "bad.pem").write_bytes(bad)
    img = tmp_path / "flash.img"
    img.write_bytes(b"\xff" * 512 * 64)  # 32 KB of littlefs
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(ROOT / "lib"), str(ROOT / "build" / "umqtt")]))
    p = subprocess.run([MP, "-c", PREPARE % (str(img), str(tmp_path / "good.pem"), str(tmp_path / "bad.pem"), sha(bad),
                                             fault == "full")], env=env, capture_output=True, text=True, timeout=60)
    assert p.stdout.splitlines()[-1] == "ok", p.stdout + p.stderr
    if fault == "full":
        assert p.stdout.startswith("full "), p.stdout  # nothing more fits

    cfg = {"hostname": hub.hostname, "device_id": "ff-1", "gateway": hub.host, "port": hub.mqtt_port, "retry_cap": 2}
    proc = subprocess.Popen([MP, "-c", RUN % (str(img), fault == "read-only", cfg, {"device_key": key})], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "iothub: connected to" in line or len(lines) > 200:
                break
    finally:
        proc.kill()
        proc.wait()
    log = "\n".join(lines)
    assert "iothub: connected to %s as ff-1" % hub.hostname in log, log
    refused = [x for x in lines if "TLS refused" in x]
    assert len(refused) == 3, log  # three trials of the staged set, then the active set
    # littlefs says ENOSPC when its blocks are gone and ENAMETOOLONG when a folder's metadata is full
    names = (["EROFS (flash read-only)"] if fault == "read-only" else
             ["ENOSPC (flash full)", "ENAMETOOLONG (littlefs: no room for the entry)"])
    recorded = [x for x in lines
                if any("could not record a staged trial on flash (%s): counted in RAM" % n in x for n in names)]
    assert len(recorded) == 1, log  # said once, by name
    assert "staged set seq 2 discarded: it failed 3 TLS attempts" in log
    assert "Traceback" not in log


FILL_AFTER_CONFIG = IMAGE + FILL_DATA + """
import json
mount("VfsLfs2", %r, mkfs=True)
for name, doc in (("config.json", %r), ("secrets.json", %r)):
    with open("/flash/" + name, "w") as f:
        f.write(json.dumps(doc))
from iothub import certstore
certstore.Store("/flash/certs").install_active(open(%r, "rb").read())
fill_data()
import os
print("free", os.statvfs("/flash")[0] * os.statvfs("/flash")[3])
"""

BOOT = IMAGE + """
mount("VfsLfs2", %r)
from iothub import config
cfg, secrets = config.load("/flash")  # as main.py boots
""" + SESSION


def test_a_flash_too_full_for_the_outbox_never_keeps_the_board_off_the_hub(hub, tmp_path):
    # A flash with no room for the outbox boots, connects and sends with a RAM queue, says so in one line and
    # in the twin (it was a config error once: the board never connected, so nothing could fix it remotely).
    key = hub.add_device("full-1")
    (tmp_path / "ca.pem").write_bytes(hub.ca_pem)
    img = tmp_path / "flash.img"
    img.write_bytes(b"\xff" * 512 * 64)
    cfg = {"hostname": hub.hostname, "device_id": "full-1", "gateway": hub.host, "port": hub.mqtt_port}
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(ROOT / "lib"), str(ROOT / "build" / "umqtt")]))
    p = subprocess.run([MP, "-c", FILL_AFTER_CONFIG % (str(img), cfg, {"device_key": key}, str(tmp_path / "ca.pem"))],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("free "), p.stdout + p.stderr
    free_kb = int(p.stdout.split()[1]) // 1024

    proc = subprocess.Popen([MP, "-c", BOOT % str(img)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "iothub: connected to" in line or len(lines) > 200:
                break
        deadline = time.monotonic() + 60
        while len(hub.service.telemetry("full-1")) < 2 or "outboxProblem" not in reported(hub, "full-1"):
            assert time.monotonic() < deadline and proc.poll() is None, "\n".join(lines)
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    said = [m.group(1) for m in map(re.compile(r"iothub: outbox: (.*): telemetry is kept in RAM only$").match, lines)
            if m]
    assert len(said) == 1, lines  # one line
    m = re.fullmatch(r"outbox_kb is 64 KB, more than the flash has for it \((\d+) KB free\)", said[0])
    assert m and int(m.group(1)) <= free_kb, said
    assert reported(hub, "full-1")["outboxProblem"] == said[0]
    assert "Traceback" not in "\n".join(lines)


def reported(hub, device_id):
    return hub.service.get_twin(device_id)["properties"]["reported"]
