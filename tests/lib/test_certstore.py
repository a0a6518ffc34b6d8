"""lib/iothub/certstore.py on the unix port: slots, trial and commit over real TLS, refusals,
corruption of every file, and power cuts at every flash operation."""
import json
import shutil

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from certhelpers import mp_json, make_cert, days, sha, tree
from flashimage import CRASH, IMAGE
from upyhub.certs import device_modules

certstore, _ = device_modules()  # the same module under CPython: used only to lay out starting states


def pem(ca):
    return ca.cert_pem.bytes()


def fp(ca):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return sha(x509.load_pem_x509_certificate(pem(ca)).public_bytes(Encoding.DER))


def lay(d, active=None, staged=None, fallback=None, trials=None):
    s = certstore.Store(str(d))
    if fallback:
        s.install_active(fallback)
    if active:
        s.install_active(active)
    if staged:
        s.stage(staged, sha(staged))
    if trials is not None:
        (d / "trials").write_text("%d %d" % (s.slot("staged")["seq"], trials))
    return d


BOOT = """
store = certstore.Store(%r)
problems = list(store.problems)
tries = []
for i in range(2 * store.tries + 2):
    try:
        slot, ok = attempt(store, %d)
    except ValueError as e:  # no roots at all
        slot, ok = str(e), False
    tries.append([slot, ok])
    if ok:
        break
st = store.status()
again = certstore.Store(%r)
print(json.dumps({"problems": problems, "tries": tries, "status": st, "again": again.problems,
                  "active": [c["sha256"] for c in st["active"]["certs"]] if st["active"] else None,
                  "fallback": st["fallback"]["fingerprints"] if st["fallback"] else None}))
"""


def boot(run_mp, d, server, **kw):
    return mp_json(run_mp, BOOT % (str(d), server.port, str(d)), **kw)


def test_migration_staged_root_is_promoted_after_a_tls_session(run_mp, tmp_path, cas, tls_server):
    ca1, ca2 = cas
    d = lay(tmp_path / "certs", active=pem(ca1))
    tls_server.use(ca1)
    out = boot(run_mp, d, tls_server)
    assert out["tries"] == [["active", True]] and out["active"] == [fp(ca1)]
    # The new root arrives and is staged by the device itself.
    code = "s = certstore.Store(%r)\nm = s.stage(open(%r,'rb').read(), %r)\nprint(json.dumps(s.status()))"
    (tmp_path / "ca2.pem").write_bytes(pem(ca2))
    st = mp_json(run_mp, code % (str(d), str(tmp_path / "ca2.pem"), sha(pem(ca2))))
    assert st["staged"]["sha256"] == sha(pem(ca2)) and st["active"]["certs"][0]["sha256"] == fp(ca1)
    # The hub switches to CA-2: the staged set is tried, works, and becomes active; CA-1 is the fallback.
    tls_server.use(ca2)
    out = boot(run_mp, d, tls_server)
    assert out["tries"] == [["staged", True]]
    assert out["active"] == [fp(ca2)] and out["fallback"] == [fp(ca1)] and out["status"]["staged"] is None
    out = boot(run_mp, d, tls_server)
    assert out["tries"] == [["active", True]] and out["problems"] == []


def test_a_staged_root_that_fails_is_discarded_after_n_attempts_across_reboots(run_mp, tmp_path, cas, tls_server):
    ca1, ca2 = cas
    d = lay(tmp_path / "certs", active=pem(ca1), staged=pem(ca2))
    tls_server.use(ca1)
    seen = []
    # One attempt per boot (a device that resets after each failure): the trial count is on flash.
    code = "store = certstore.Store(%r)\nslot, ok = attempt(store, %d)\nprint(json.dumps([slot, ok, store.status()['staged'], store.problems]))"
    for _ in range(4):
        seen.append(mp_json(run_mp, code % (str(d), tls_server.port)))
    assert [s[:2] for s in seen] == [["staged", False]] * 3 + [["active", True]]
    assert [s[2]["trials"] for s in seen[:2]] == [1, 2]
    # The third failure discards it at once; the next boot goes straight to the active set.
    assert seen[2][2] is None and any("discarded: it failed 3 TLS attempts" in p for p in seen[2][3])
    assert seen[3][2] is None and seen[3][3] == []
    assert not (d / "staged").exists()
    assert json.loads((d / "active" / "manifest").read_text().splitlines()[0])["sha256"] == sha(pem(ca1))


def test_active_failing_n_times_tries_the_fallback_and_keeps_it(run_mp, tmp_path, cas, tls_server):
    ca1, ca2 = cas
    d = lay(tmp_path / "certs", fallback=pem(ca1), active=pem(ca2))  # the hub went back to CA-1
    tls_server.use(ca1)
    out = boot(run_mp, d, tls_server)
    assert out["tries"] == [["active", False]] * 3 + [["fallback", True]]
    assert out["active"] == [fp(ca1)] and out["fallback"] == [fp(ca2)]


REFUSE = """
store = certstore.Store(%r)
out = []
for path, digest in %r:
    try:
        store.stage(open(path, "rb").read(), digest)
        out.append(None)
    except ValueError as e:
        out.append(str(e))
print(json.dumps(out))
"""


def test_bad_sets_are_refused_with_a_clear_message_and_nothing_changes(run_mp, tmp_path, cas):
    ca1, _ = cas
    d = lay(tmp_path / "certs", active=pem(ca1))
    before = tree(d)
    root = make_cert("Good Root")
    cases = {
        "leaf": (make_cert("leaf", ca=False, issuer=root).pem, "not a CA certificate"),
        "garbage": (b"this is not a certificate at all\n" * 3, "no CERTIFICATE block"),
        "garbage-der": (b"\x30\x82\x01\x00" + bytes(40), "not an X.509 certificate"),
        "expired": (make_cert("Old Root", not_before=days(-400), not_after=days(-1)).pem, "expired on"),
        "future": (make_cert("Future Root", not_before=days(10)).pem, "not valid before"),
        "intermediate": (make_cert("Intermediate", issuer=root).pem, "pin roots, not intermediates"),
        "no-certsign": (make_cert("No Sign Root", key_cert_sign=False).pem, "keyCertSign"),
        "mixed": (root.pem + make_cert("leaf2", ca=False, issuer=root).pem, "not a CA certificate"),
        "key": (root.pem + root.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
                "only CERTIFICATE blocks"),
        "oversized": (root.pem * 40, "more than the limit of 16384"),
        "too-many": (b"".join(make_cert("Root %d" % i).pem for i in range(9)), "more than the limit of 8"),
        "empty": (b"", "empty"),
    }
    args = []
    for name, (data, _) in cases.items():
        p = tmp_path / (name + ".pem")
        p.write_bytes(data)
        args.append((str(p), sha(data)))
    # Right content, wrong digest; digest that is not hex.
    p = tmp_path / "root.pem"
    p.write_bytes(root.pem)
    args += [(str(p), sha(root.pem + b"x")), (str(p), "zz" * 32)]
    out = mp_json(run_mp, REFUSE % (str(d), args))
    for (name, (_, want)), msg in zip(cases.items(), out):
        assert msg is not None and want in msg, (name, msg)
        assert "\n" not in msg
    assert "SHA-256 mismatch" in out[-2] and "hexadecimal" in out[-1]
    assert tree(d) == before


def test_staging_the_active_set_again_writes_nothing(run_mp, tmp_path, cas):
    ca1, _ = cas
    d = lay(tmp_path / "certs", active=pem(ca1))
    before = tree(d)
    (tmp_path / "a.pem").write_bytes(pem(ca1))
    code = "s = certstore.Store(%r)\nm = s.stage(open(%r,'rb').read(), %r)\nprint(json.dumps([m is s.slot('active'), s.status()['staged']]))"
    assert mp_json(run_mp, code % (str(d), str(tmp_path / "a.pem"), sha(pem(ca1)))) == [True, None]
    assert tree(d) == before


def test_empty_or_hostile_layouts_never_crash_boot(run_mp, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "weird" / "active" / "manifest").mkdir(parents=True)
    (tmp_path / "weird" / "staged").write_text("a file where a folder should be")
    (tmp_path / "weird" / "fallback").mkdir()
    body = b'{"v": 1, "file": "../../file", "sha256": 5}'  # well formed, checksummed, but pointing outside
    (tmp_path / "weird" / "fallback" / "manifest").write_bytes(body + b"\n" + sha(body).encode() + b"\n")
    code = """
out = []
for d in %r:
    s = certstore.Store(d)
    try:
        s.roots_for_connect()
        r = "roots"
    except ValueError as e:
        r = str(e)
    out.append([r, s.problems, s.status()["active"]])
print(json.dumps(out))
""" % [str(tmp_path / "none"), str(tmp_path / "file"), str(tmp_path / "weird")]
    out = mp_json(run_mp, code)
    for r, problems, active in out:
        assert r.startswith("no valid root certificates in") and active is None
    assert out[0][1] == []  # an unprovisioned board is not an error at load
    assert any("active set is torn or corrupt" in p for p in out[2][1])
    assert any("fallback set is torn or corrupt" in p for p in out[2][1])
    assert (tmp_path / "file").read_text() == "x"


def variants(data):
    n = len(data)
    mid = bytearray(data)
    mid[n // 2] ^= 0x01
    return {"deleted": None, "empty": b"", "one": data[:1], "half": data[: n // 2], "minus1": data.rstrip(b"\n")[:-1],
            "flip": bytes(mid), "extra": data + b"\x00garbage"}


def test_every_file_truncated_or_corrupted_boots_and_connects(run_mp, tmp_path, cas, tls_server):
    ca1, ca2 = cas
    ca3 = make_cert("Third Root")
    base = lay(tmp_path / "base", fallback=pem(ca1), active=pem(ca1) + ca3.pem, staged=pem(ca2), trials=1)
    tls_server.use(ca1)
    dirs, meta = [], []
    for f in sorted(p for p in base.rglob("*") if p.is_file()):
        rel = f.relative_to(base)
        for name, data in variants(f.read_bytes()).items():
            d = tmp_path / ("v%d" % len(dirs))
            shutil.copytree(base, d)
            if data is None:
                (d / rel).unlink()
            else:
                (d / rel).write_bytes(data)
            dirs.append(str(d))
            meta.append((str(rel), name))
    code = """
out = []
for d in %r:
    store = certstore.Store(d)
    problems = list(store.problems)
    tries = []
    for i in range(2 * store.tries + 2):
        slot, ok = attempt(store, %d)
        tries.append([slot, ok])
        if ok:
            break
    st = store.status()
    out.append([problems, tries, [c["sha256"] for c in st["active"]["certs"]] if st["active"] else None,
                certstore.Store(d).problems])
print(json.dumps(out))
""" % (dirs, tls_server.port)
    out = mp_json(run_mp, code, timeout=300)
    assert len(out) == len(meta) > 40
    for (rel, name), (problems, tries, active, again) in zip(meta, out):
        what = "%s %s" % (rel, name)
        assert tries[-1][1] is True, what  # always connects
        assert active in ([fp(ca1), ca3.sha256], [fp(ca1)]), what  # with a set that was valid
        assert again == [], what  # the first boot repaired what it found
        slot_dir = rel.split("/")[0]
        if slot_dir == "trials":
            continue
        assert problems, what  # a torn or corrupt slot is reported ...
        if slot_dir == "staged":
            assert "staged" not in [t[0] for t in tries], what  # ... and never used
        if slot_dir == "active":
            assert active == [fp(ca1)], what  # the fallback took over


# ---- power cuts: the write is killed (no cleanup, no flush) before every flash operation

OPS = {
    # name: (starting state, server CA, device code run with the power cut armed)
    "install-first": (dict(), 1, "s = certstore.Store(D)\ncertstore._hook = _cut\ns.install_active(CA1)"),
    "install-again": (dict(active=1), 1, "s = certstore.Store(D)\ncertstore._hook = _cut\ns.install_active(CA2)"),
    "stage": (dict(active=1), 1, "s = certstore.Store(D)\ncertstore._hook = _cut\ns.stage(CA2, SHA2)"),
    "restage": (dict(active=1, staged=2), 1, "s = certstore.Store(D)\ncertstore._hook = _cut\ns.stage(CA3, SHA3)"),
    "trial": (dict(active=1, staged=2), 2, "s = certstore.Store(D)\ncertstore._hook = _cut\nattempt(s, PORT)"),
    "discard": (dict(active=1, staged=2, trials=3), 1, "s = certstore.Store(D)\ncertstore._hook = _cut\nattempt(s, PORT)"),
    "swap": (dict(fallback=1, active=2), 1,
             "s = certstore.Store(D)\ns._active_failures = 3\ncertstore._hook = _cut\nattempt(s, PORT)"),
    "repair": (dict(active=1, staged=2, broken=True), 1, "certstore._hook = _cut\ns = certstore.Store(D)"),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_power_cut_at_every_step_still_boots_and_connects(run_mp, tmp_path, cas, tls_server, op):
    ca1, ca2 = cas
    import trustme

    trust3 = trustme.CA()
    sets = {1: pem(ca1), 2: pem(ca2), 3: pem(trust3)}
    state, server, code = OPS[op]
    base = tmp_path / "base"
    if "broken" in state:
        # Left by an earlier cut: a half-written temp slot and a promotion stopped between its renames.
        lay(base, fallback=sets[1], active=sets[2], staged=sets[2])
        shutil.rmtree(base / "active")
        (base / "staged.tmp").mkdir()
        (base / "staged.tmp" / "roots.pem").write_bytes(sets[3][:100])
    else:
        lay(base, active=sets.get(state.get("active")), staged=sets.get(state.get("staged")),
            fallback=sets.get(state.get("fallback")), trials=state.get("trials"))
        base.mkdir(exist_ok=True)
    tls_server.use((ca1, ca2)[server - 1])
    files = {}
    for k, data in sets.items():
        files[k] = tmp_path / ("ca%d.pem" % k)
        files[k].write_bytes(data)
    prelude = "D = %r\nPORT = %d\nCA1 = open(%r,'rb').read()\nCA2 = open(%r,'rb').read()\nCA3 = open(%r,'rb').read()\nSHA2 = %r\nSHA3 = %r\n"
    known = {fp(ca1), fp(ca2), fp(trust3)}
    k = 0
    while True:
        k += 1
        assert k < 200
        d = tmp_path / ("cut%d" % k)
        shutil.copytree(base, d)
        src = prelude % (str(d), tls_server.port, str(files[1]), str(files[2]), str(files[3]), sha(sets[2]), sha(sets[3]))
        proc = run_mp(__import__("certhelpers").DEVICE + CRASH % k + src + code + "\nprint('DONE')")
        if proc.returncode == 0 and "DONE" in proc.stdout:
            break
        assert proc.returncode == 9, proc.stderr
        out = boot(run_mp, d, tls_server)
        what = "%s cut before flash operation %d" % (op, k)
        if op == "install-first" and out["active"] is None:
            # Nothing was provisioned yet: an unfinished first write leaves no set, never a broken one.
            assert not (d / "active").exists(), what
            assert out["tries"][0][0].startswith("no valid root certificates"), what
            continue
        assert out["tries"][-1][1] is True, (what, out)
        assert out["active"] and set(out["active"]) <= known, what
        assert out["again"] == [], (what, out["again"])
    assert k > 3  # the operation really went through several flash operations


# ---- the boards' own filesystems: littlefs2 (ESP32, Pico W) and FAT, on an image file

FLASH = IMAGE + """
mount(%r, %r, mkfs=%r)
D = "/flash/certs"
"""


@pytest.mark.parametrize("fs", ["VfsLfs2", "VfsFat"])
def test_board_filesystem_trial_commit_and_power_cuts(run_mp, tmp_path, cas, tls_server, fs):
    ca1, ca2 = cas
    (tmp_path / "ca1.pem").write_bytes(pem(ca1))
    (tmp_path / "ca2.pem").write_bytes(pem(ca2))
    base = tmp_path / "base.img"
    base.write_bytes(b"\xff" * 512 * 128)
    setup = FLASH % (fs, str(base), True) + """
s = certstore.Store(D)
s.install_active(open(%r, "rb").read())
ca2 = open(%r, "rb").read()
s.stage(ca2, %r)
print(json.dumps(sorted(os.listdir(D))))
""" % (str(tmp_path / "ca1.pem"), str(tmp_path / "ca2.pem"), sha(pem(ca2)))
    assert mp_json(run_mp, setup) == ["active", "staged"]
    tls_server.use(ca2)  # the hub has switched: the trial promotes the staged set (renames of folders)
    boot_img = FLASH + """
store = certstore.Store(D)
problems = list(store.problems)
slot, ok = attempt(store, %d)
st = store.status()
print(json.dumps([problems, slot, ok, [c["sha256"] for c in st["active"]["certs"]], st["fallback"], certstore.Store(D).problems]))
"""
    k = 0
    while True:
        k += 1
        assert k < 50
        img = tmp_path / ("cut%d.img" % k)
        shutil.copyfile(base, img)
        proc = run_mp(__import__("certhelpers").DEVICE + FLASH % (fs, str(img), False) + CRASH % k
                      + "s = certstore.Store(D)\ncertstore._hook = _cut\nattempt(s, %d)\nprint('DONE')" % tls_server.port)
        out = mp_json(run_mp, boot_img % (fs, str(img), False, tls_server.port))
        problems, slot, ok, active, fallback, again = out
        assert ok and active == [fp(ca2)] and again == [], (k, out)
        if proc.returncode == 0 and "DONE" in proc.stdout:
            assert slot == "active" and fallback["fingerprints"] == [fp(ca1)]
            break
        assert proc.returncode == 9, proc.stderr
    assert k > 3


def test_compiled_modules_under_a_64k_heap(run_mp, mpy_lib, tmp_path, cas):  # noqa: F811
    # What a board runs: .mpy on a 64 KB heap, with the 3.3 KB Azure bundle (a 4096-bit RSA root inside).
    # (No handshake here: the unix port's mbedtls takes 40 KB of the Python heap per SSLContext,
    # which boards like the ESP32 keep outside it; the handshakes run in the next test.)
    import subprocess
    import sys

    ca1, _ = cas
    azure = tmp_path / "azure.pem"
    subprocess.run([sys.executable, "-m", "upyhub", "certs", "bundle", "--out", str(azure)], check=True, capture_output=True)
    (tmp_path / "ca1.pem").write_bytes(pem(ca1))
    code = """
import gc
s = certstore.Store(%r)
s.install_active(open(%r, "rb").read())
m = s.stage(open(%r, "rb").read(), %r)
cadata, slot = s.roots_for_connect()
s.tls_ok(slot)
report = rootupdate.report(s, 30)
del cadata
gc.collect()
print(json.dumps([slot, [c["cn"] for c in report["active"]["certs"]], report["fallback"]["fingerprints"], gc.mem_free()]))
""" % (str(tmp_path / "certs"), str(tmp_path / "ca1.pem"), str(azure), sha(azure.read_bytes()))
    slot, active, fallback, free = mp_json(run_mp, code, mpy=True, heapsize="64K", path_extra=(mpy_lib,))
    assert slot == "staged"
    assert active == ["DigiCert Global Root G2", "Microsoft RSA Root Certificate Authority 2017"]
    assert fallback == [fp(ca1)]
    assert free > 16 * 1024  # what is left for the rest of the firmware once the set is in use


def test_compiled_modules_trial_and_commit_over_tls(run_mp, mpy_lib, tmp_path, cas, tls_server):  # noqa: F811
    ca1, ca2 = cas
    azure = tmp_path / "azure.pem"
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "upyhub", "certs", "bundle", "--out", str(azure)], check=True, capture_output=True)
    (tmp_path / "ca1.pem").write_bytes(pem(ca1))
    both = pem(ca1) + pem(ca2)
    (tmp_path / "both.pem").write_bytes(both)
    tls_server.use(ca1)
    code = """
s = certstore.Store(%r)
s.install_active(open(%r, "rb").read())
s.stage(open(%r, "rb").read(), %r)
r1 = attempt(s, %d)
s.stage(open(%r, "rb").read(), %r)
r2 = attempt(s, %d)
print(json.dumps([r1, r2, [c["sha256"] for c in s.status()["active"]["certs"]], s.status()["fallback"]["fingerprints"]]))
""" % (str(tmp_path / "certs"), str(tmp_path / "ca1.pem"), str(azure), sha(azure.read_bytes()), tls_server.port,
       str(tmp_path / "both.pem"), sha(both), tls_server.port)
    r1, r2, active, fallback = mp_json(run_mp, code, mpy=True, path_extra=(mpy_lib,))
    assert r1 == ["staged", False]  # Azure's roots do not verify the local hub: one trial spent, nothing lost
    assert r2 == ["staged", True]  # a bundle of old + new roots is promoted at the next connection
    assert active == [fp(ca1), fp(ca2)] and fallback == [fp(ca1)]


def test_flash_rot_after_boot_falls_back_and_heals(run_mp, tmp_path, cas, tls_server):
    # The active file goes bad while the device runs: the next attempt uses the fallback, which
    # then becomes the active set again; the next boot finds nothing to repair.
    ca1, ca2 = cas
    d = lay(tmp_path / "certs", fallback=pem(ca1), active=pem(ca1) + pem(ca2))
    tls_server.use(ca1)
    code = """
s = certstore.Store(%r)
f = open(%r + "/active/roots.pem", "r+b")
f.seek(100)
f.write(b"X")
f.close()
r = attempt(s, %d)
print(json.dumps([r, s.problems, s.status()["active"]["certs"][0]["sha256"], certstore.Store(%r).problems]))
""" % (str(d), str(d), tls_server.port, str(d))
    r, problems, active, again = mp_json(run_mp, code)
    assert r == ["fallback", True]
    assert any("active set is torn or corrupt" in p for p in problems)
    assert active == fp(ca1) and again == []


def test_manifest_with_a_right_digest_but_wrong_types_is_invalid_never_a_crash(run_mp, tmp_path, cas):
    # Someone (or a bug) wrote a manifest that checksums fine but whose entries have the wrong types:
    # the set is reported as torn or corrupt and not used; status and report never raise.
    ca1, ca2 = cas
    base = lay(tmp_path / "base", fallback=pem(ca1), active=pem(ca2))
    first = json.loads((base / "active" / "manifest").read_text().splitlines()[0])
    bad = {
        "cn-int": dict(first, certs=[dict(first["certs"][0], cn=5)]),
        "sha-short": dict(first, certs=[dict(first["certs"][0], sha256="ab")]),
        "notafter-str": dict(first, certs=[dict(first["certs"][0], notAfter="2030")]),
        "certs-ints": dict(first, certs=[1, 2]),
        "certs-str": dict(first, certs="x"),
        "source-list": dict(first, source=["ota"]),
    }
    dirs = []
    for name, m in bad.items():
        d = tmp_path / name
        shutil.copytree(base, d)
        line = json.dumps(m).encode()
        (d / "active" / "manifest").write_bytes(line + b"\n" + sha(line).encode() + b"\n")
        dirs.append(str(d))
    code = """
out = []
for d in %r:
    s = certstore.Store(d)
    slot = s.roots_for_connect()[1]
    out.append([slot, s.problems, s.status()["active"]["certs"][0]["sha256"], rootupdate.report(s, 30)["warnDays"]])
print(json.dumps(out))
""" % dirs
    out = mp_json(run_mp, code)
    for name, (slot, problems, active, warn) in zip(bad, out):
        assert any("active set is torn or corrupt (manifest" in p for p in problems), (name, problems)
        assert slot == "active" and active == fp(ca1), name  # the fallback was restored as the active set
        assert warn == 30
