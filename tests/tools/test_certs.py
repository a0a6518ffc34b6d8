"""upyhub certs: inspect, bundle, stage-local; what the host writes is read by the device on the unix port."""
import json
import subprocess
import sys
import warnings

import certifi
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certhelpers import ROOT, days, make_cert, mp_json, sha, tree


def upyhub(*args):
    return subprocess.run([sys.executable, "-m", "upyhub", *map(str, args)], capture_output=True, text=True, timeout=120)


def one_line_error(proc, status=2):
    assert proc.returncode == status, proc
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("upyhub: error: ") and "Traceback" not in proc.stderr
    return lines[0]


def test_bundle_is_the_two_azure_roots_from_certifi(tmp_path, run_mp):
    out = tmp_path / "azure.pem"
    proc = upyhub("certs", "bundle", "--out", out)
    assert proc.returncode == 0, proc.stderr
    certs = x509.load_pem_x509_certificates(out.read_bytes())
    names = [c.subject.rfc4514_string() for c in certs]
    assert [n.split(",")[0] for n in names] == ["CN=DigiCert Global Root G2", "CN=Microsoft RSA Root Certificate Authority 2017"]
    # Byte for byte the certificates of the installed certifi (nothing pasted by hand).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mozilla = {c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(open(certifi.where(), "rb").read())}
    assert all(c.public_bytes(Encoding.DER) in mozilla for c in certs)
    assert not list(tmp_path.glob("*.tmp"))
    # The device takes it as its active set.
    code = "s = certstore.Store(%r)\ns.install_active(open(%r,'rb').read())\nprint(json.dumps(s.roots_for_connect()[1]))"
    assert mp_json(run_mp, code % (str(tmp_path / "certs"), str(out))) == "active"


def test_bundle_bad_output_paths(tmp_path):
    assert "does not exist" in one_line_error(upyhub("certs", "bundle", "--out", tmp_path / "no" / "x.pem"))
    assert "is a directory" in one_line_error(upyhub("certs", "bundle", "--out", tmp_path))
    assert "--out" in one_line_error(upyhub("certs", "bundle"))


def test_inspect_shows_subjects_fingerprints_and_dates(tmp_path):
    root = make_cert("Inspect Root", not_after=days(100))
    leaf = make_cert("leaf.example", ca=False, issuer=root)
    p = tmp_path / "b.pem"
    p.write_bytes(root.pem + leaf.pem)
    proc = upyhub("certs", "inspect", p)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for c in (root, leaf):
        assert c.sha256 in text
        assert c.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ") in text
    assert "CN=Inspect Root" in text and "CN=leaf.example" in text
    assert "device check: 'leaf.example' is not a CA certificate" in text
    info = json.loads(upyhub("certs", "inspect", "--json", p).stdout)
    assert [c["sha256"] for c in info["certs"]] == [root.sha256, leaf.sha256]
    assert [(c["ca"], c["root"]) for c in info["certs"]] == [(True, True), (False, False)]
    assert info["sha256"] == sha(p.read_bytes()) and 98 <= info["certs"][0]["daysLeft"] <= 100
    # DER input too.
    d = tmp_path / "r.der"
    d.write_bytes(root.der)
    info = json.loads(upyhub("certs", "inspect", "--json", d).stdout)
    assert info["certs"][0]["sha256"] == root.sha256 and info["device"] == "accepted"


def test_inspect_bad_input_is_one_line(tmp_path):
    g = tmp_path / "g.pem"
    g.write_bytes(b"garbage\n")
    assert "not a PEM bundle or DER certificate" in one_line_error(upyhub("certs", "inspect", g))
    assert "not found" in one_line_error(upyhub("certs", "inspect", tmp_path / "missing.pem"))
    e = tmp_path / "e.pem"
    e.write_bytes(b"")
    assert "is empty" in one_line_error(upyhub("certs", "inspect", e))


def test_stage_local_writes_what_the_simulated_board_reads(tmp_path, run_mp):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "config.json").write_text(json.dumps({"certs_dir": "roots"}))
    old, new = make_cert("Old Root"), make_cert("New Root")
    (tmp_path / "old.pem").write_bytes(old.pem)
    (tmp_path / "new.pem").write_bytes(new.pem)
    proc = upyhub("certs", "stage-local", "--flash", flash, "--active", tmp_path / "old.pem")
    assert proc.returncode == 0 and "installed as active seq 1" in proc.stdout, proc.stderr
    proc = upyhub("certs", "stage-local", "--flash", flash, tmp_path / "new.pem")
    assert proc.returncode == 0 and "staged seq 2" in proc.stdout and "New Root" in proc.stdout, proc.stderr
    st = mp_json(run_mp, "s = certstore.Store(%r)\nprint(json.dumps([s.status(), s.problems]))" % str(flash / "roots"))
    status, problems = st
    assert problems == []
    assert status["active"]["certs"][0]["sha256"] == old.sha256
    assert status["staged"]["sha256"] == sha(new.pem) and status["staged"]["trials"] == 0


def test_stage_local_refusals_write_nothing(tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    ok = make_cert("OK Root")
    (tmp_path / "ok.pem").write_bytes(ok.pem)
    assert upyhub("certs", "stage-local", "--flash", flash, "--active", tmp_path / "ok.pem").returncode == 0
    before = tree(flash)
    bad = {
        "leaf.pem": (make_cert("leaf", ca=False, issuer=ok).pem, "not a CA certificate"),
        "old.pem": (make_cert("Old", not_before=days(-30), not_after=days(-1)).pem, "expired on"),
        "junk.pem": (b"junk", "no CERTIFICATE block"),
    }
    for name, (data, want) in bad.items():
        (tmp_path / name).write_bytes(data)
        msg = one_line_error(upyhub("certs", "stage-local", "--flash", flash, tmp_path / name))
        assert "refused: " in msg and want in msg
    assert tree(flash) == before
    # A refused set does not even create a new flash folder.
    (tmp_path / "leaf.pem").write_bytes(bad["leaf.pem"][0])
    one_line_error(upyhub("certs", "stage-local", "--flash", tmp_path / "new", tmp_path / "leaf.pem"))
    assert not (tmp_path / "new").exists()


def test_stage_local_creates_the_flash_folder(tmp_path, run_mp):
    root = make_cert("First Root")
    (tmp_path / "r.pem").write_bytes(root.pem)
    flash = tmp_path / "boards" / "new"
    proc = upyhub("certs", "stage-local", "--flash", flash, "--active", tmp_path / "r.pem")
    assert proc.returncode == 0, proc.stderr
    st = mp_json(run_mp, "print(json.dumps(certstore.Store(%r).status()))" % str(flash / "certs"))
    assert st["active"]["certs"][0]["sha256"] == root.sha256


# --- a flash folder written by a board is untrusted: links in it are refused, never followed -------------

def host_folder(tmp_path):
    victim = tmp_path / "host-folder"
    victim.mkdir()
    (victim / "precious.txt").write_text("operator's file\n")
    return victim


def test_stale_tmp_symlink_is_refused_and_the_host_folder_kept(tmp_path):
    flash = tmp_path / "flash"
    ok = make_cert("OK Root")
    (tmp_path / "ok.pem").write_bytes(ok.pem)
    assert upyhub("certs", "stage-local", "--flash", flash, "--active", tmp_path / "ok.pem").returncode == 0
    victim = host_folder(tmp_path)
    # What code on the board can leave: a stale write's temporary folder that is a link to a host folder.
    (flash / "certs" / "staged.tmp").symlink_to(victim)
    (tmp_path / "new.pem").write_bytes(make_cert("New Root").pem)
    msg = one_line_error(upyhub("certs", "stage-local", "--flash", flash, tmp_path / "new.pem"))
    assert "symlink" in msg and "certs/staged.tmp" in msg
    assert tree(victim) == {"precious.txt": b"operator's file\n"}


def test_certs_folder_symlink_is_refused_nothing_written_outside(tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    victim = host_folder(tmp_path)
    (flash / "certs").symlink_to(victim)
    (tmp_path / "r.pem").write_bytes(make_cert("R").pem)
    msg = one_line_error(upyhub("certs", "stage-local", "--flash", flash, "--active", tmp_path / "r.pem"))
    assert "symlink" in msg and "(certs)" in msg
    assert tree(victim) == {"precious.txt": b"operator's file\n"}


def test_link_made_after_the_check_still_leads_nowhere(tmp_path, monkeypatch):
    """The race: a running board makes the link after the host checked the folder. The write itself
    runs in the board's confinement, so the kernel refuses to follow it out of the flash folder."""
    from upyhub import certs, files
    from upyhub.errors import UpyhubError

    flash = tmp_path / "flash"
    assert certs.install_local(flash, make_cert("Old").pem)["seq"] == 1
    victim = host_folder(tmp_path)
    (flash / "certs" / "active.tmp").symlink_to(victim)
    monkeypatch.setattr(files, "check_flash", lambda flash: 0)  # as if the link came just after the check
    try:
        certs.install_local(flash, make_cert("New").pem)
    except UpyhubError:
        pass
    assert tree(victim) == {"precious.txt": b"operator's file\n"}


def board_flash(tmp_path, active_pem):
    """A provisioned board's flash: the device package in /lib (as the firmware installs it) and an active set."""
    import shutil

    flash = tmp_path / "flash"
    (flash / "lib" / "iothub").mkdir(parents=True)
    for mod in ("__init__", "clock", "crypto", "x509", "certstore"):
        shutil.copy(ROOT / "lib" / "iothub" / (mod + ".py"), flash / "lib" / "iothub")
    (flash / "config.json").write_text(json.dumps({"certs_dir": "certs"}))
    (tmp_path / "active.pem").write_bytes(active_pem)
    assert upyhub("certs", "stage-local", "--flash", flash, "--active", tmp_path / "active.pem").returncode == 0
    return flash


def test_stage_on_a_board_over_mpremote(tmp_path, run_mp, certs_sim_board):
    old, new = make_cert("Old Root"), make_cert("New Root")
    flash = board_flash(tmp_path, old.pem)
    board = certs_sim_board(flash)
    (tmp_path / "new.pem").write_bytes(new.pem)
    proc = upyhub("certs", "stage", "--port", board.port, tmp_path / "new.pem")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "staged seq 2 on %s (/certs): New Root" % board.port
    status = mp_json(run_mp, "print(json.dumps(certstore.Store(%r).status()))" % str(flash / "certs"))
    assert status["staged"]["sha256"] == sha(new.pem) and status["active"]["certs"][0]["sha256"] == old.sha256
    assert sorted(p.name for p in flash.iterdir()) == ["certs", "config.json", "lib"]  # the copy was removed


def test_stage_on_a_board_refusals_change_nothing(tmp_path, certs_sim_board):
    old, new = make_cert("Old Root"), make_cert("New Root")
    flash = board_flash(tmp_path, old.pem)
    board = certs_sim_board(flash)
    (tmp_path / "new.pem").write_bytes(new.pem)
    # Refused on the host before anything is copied; refused on the board when its flash cannot take it.
    before = tree(flash)
    expired = make_cert("Expired", not_before=days(-9), not_after=days(-1))
    (tmp_path / "expired.pem").write_bytes(expired.pem)
    assert "refused before copying" in one_line_error(upyhub("certs", "stage", "--port", board.port, tmp_path / "expired.pem"))
    msg = one_line_error(upyhub("certs", "stage", "--port", board.port, "--certs-dir", "config.json/x",
                                tmp_path / "new.pem"), status=1)  # refused by the board at run time
    assert "the board refused it: could not write the board's flash" in msg
    assert tree(flash) == before


def test_stage_on_a_board_without_firmware(tmp_path, certs_sim_board):
    flash = tmp_path / "empty"
    flash.mkdir()
    board = certs_sim_board(flash)
    root = make_cert("R")
    (tmp_path / "r.pem").write_bytes(root.pem)
    assert "no iothub package" in one_line_error(upyhub("certs", "stage", "--port", board.port, tmp_path / "r.pem"),
                                                 status=1)
