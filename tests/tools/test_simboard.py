"""The simulated board against the real mpremote (pinned in .venv) and at the byte level."""
import os
import subprocess
import time

import pytest
import serial

from simboardfixture import UPYHUB, landlock, wait_for


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# --- mpremote ----------------------------------------------------------------------------

def test_exec_output_and_errors(sim_board):
    assert ok(sim_board.mpremote("exec", "print(6 * 7)")).strip() == "42"
    bad = sim_board.mpremote("exec", "1/0")
    assert bad.returncode == 1
    assert "ZeroDivisionError" in bad.stdout
    assert 'File "<stdin>", line 1' in bad.stdout
    assert "simboard" not in bad.stdout  # the runtime's own frames are not the board's


def test_fs_roundtrip(sim_board, tmp_path):
    blob = bytes(range(256)) * 40 + os.urandom(3000)
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    (tmp_path / "hello.py").write_text("print('hi from hello')\n")
    ok(sim_board.mpremote("fs", "mkdir", ":data"))
    ok(sim_board.mpremote("fs", "cp", str(src), ":data/blob.bin", "+", "fs", "cp", str(tmp_path / "hello.py"), ":"))
    assert (sim_board.flash / "data" / "blob.bin").read_bytes() == blob
    listing = ok(sim_board.mpremote("fs", "ls", ":data"))
    assert "%d blob.bin" % len(blob) in " ".join(listing.split())
    assert ok(sim_board.mpremote("fs", "cat", ":hello.py")) == "print('hi from hello')\n"
    back = tmp_path / "back.bin"
    ok(sim_board.mpremote("fs", "cp", ":data/blob.bin", str(back)))
    assert back.read_bytes() == blob
    assert ok(sim_board.mpremote("exec", "import hello")).strip() == "hi from hello"
    ok(sim_board.mpremote("fs", "rm", ":data/blob.bin", "+", "fs", "rmdir", ":data"))
    assert not (sim_board.flash / "data").exists()
    missing = sim_board.mpremote("fs", "cat", ":nope.txt")
    assert missing.returncode != 0 and "No such file" in missing.stderr


def test_rename(sim_board):
    (sim_board.flash / "a").mkdir()
    (sim_board.flash / "a" / "f.txt").write_text("data")
    code = "import os\nos.rename('/a/f.txt', '/a/g.txt')\nos.chdir('/a')\nos.rename('g.txt', '../h.txt')\nos.rename('/a', '/b')"
    ok(sim_board.mpremote("exec", code))
    assert (sim_board.flash / "h.txt").read_text() == "data"
    assert sorted(p.name for p in sim_board.flash.iterdir()) == ["b", "h.txt"]


def test_run_and_large_code(sim_board, tmp_path):
    script = tmp_path / "script.py"
    # Well past several raw-paste windows (128 bytes each).
    body = "".join("v%d = %d\n" % (i, i) for i in range(800))
    script.write_text(body + "print(v799 + v1)\n")
    assert ok(sim_board.mpremote("run", str(script))).strip() == "800"


def test_crash_ends_the_exchange_and_reboots(sim_board):
    res = sim_board.mpremote("exec", "import ffi\nffi.open('libc.so.6').func('v', 'abort', '')()")  # SIGABRT
    assert res.returncode == 1
    assert "MicroPython exited" in res.stdout
    assert ok(sim_board.mpremote("exec", "print('alive')")).strip() == "alive"


def test_globals_persist_until_soft_reset(sim_board):
    out = ok(sim_board.mpremote("exec", "x = 5", "exec", "print(x * 2)"))
    assert out.strip() == "10"
    # mpremote soft-resets on connect: a fresh interpreter, like a board.
    out = ok(sim_board.mpremote("exec", "print('x' in globals())"))
    assert out.strip() == "False"


def test_soft_reset_runs_boot_not_main_in_raw_repl(sim_board):
    ok(sim_board.mpremote("exec", "pass"))  # the power-on boot is over: the files below are for later boots
    # gc.collect() in boot.py: the runtime's own files must survive the collector.
    (sim_board.flash / "boot.py").write_text("import gc\ngc.collect()\nopen('boots.txt', 'a').write('b')\n")
    (sim_board.flash / "main.py").write_text("open('mains.txt', 'a').write('m')\n")
    ok(sim_board.mpremote("soft-reset"))
    ok(sim_board.mpremote("soft-reset"))
    # mpremote's soft-reset: one soft reset in the raw REPL per connection.
    assert (sim_board.flash / "boots.txt").read_text() == "bb"
    assert not (sim_board.flash / "mains.txt").exists()


def test_hard_reset_runs_main_and_ctrl_c_stops_it(sim_board):
    ok(sim_board.mpremote("exec", "pass"))  # the power-on boot is over: main.py is for the next one
    (sim_board.flash / "main.py").write_text(
        "import time\nopen('started.txt', 'w').write('yes')\nwhile True:\n    time.sleep(0.05)\n")
    ok(sim_board.mpremote("reset"))
    wait_for(lambda: (sim_board.flash / "started.txt").exists())
    # A board running an endless main.py: mpremote's Ctrl-C interrupts it and takes over.
    assert ok(sim_board.mpremote("exec", "print('took over')")).strip() == "took over"


def test_machine_reset_and_unique_id(sim_board):
    first = ok(sim_board.mpremote("exec", "import machine; print(machine.unique_id().hex())")).strip()
    assert len(first) == 12
    again = ok(sim_board.mpremote("exec", "import machine; print(machine.unique_id().hex())")).strip()
    assert again == first
    rtc = eval(ok(sim_board.mpremote("rtc")).strip())  # the tuple mpremote prints
    assert len(rtc) == 8 and rtc[0] >= 2025


def test_mip_install_from_local_path(sim_board, tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "mypkg").mkdir(parents=True)
    (pkg / "mypkg" / "__init__.py").write_text("VALUE = 41\n")
    (pkg / "mypkg" / "more.py").write_text("def inc(v):\n    return v + 1\n")
    (pkg / "package.json").write_text(
        '{"urls": [["mypkg/__init__.py", "mypkg/__init__.py"], ["mypkg/more.py", "mypkg/more.py"]],'
        ' "version": "1.0"}')
    out = ok(sim_board.mpremote("mip", "install", str(pkg / "package.json")))
    assert "Installing: /lib/mypkg/more.py" in out
    assert (sim_board.flash / "lib" / "mypkg" / "more.py").exists()
    assert ok(sim_board.mpremote("exec", "import mypkg.more as m, mypkg; print(m.inc(mypkg.VALUE))")).strip() == "42"


def test_full_flash(tmp_path, start_sim_board):
    flash = tmp_path / "small"
    flash.mkdir()
    board = start_sim_board(flash, "--size", "8K")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12000))
    res = board.mpremote("fs", "cp", str(big), ":big.bin")
    assert res.returncode != 0
    assert "No space left on device" in res.stderr
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    ok(board.mpremote("fs", "rm", ":big.bin", "+", "fs", "cp", str(small), ":small.bin"))
    assert (flash / "small.bin").read_bytes() == b"x" * 1000


# --- confinement ---------------------------------------------------------------------------

ESCAPES = r"""
import os, vfs
def attempt(label, f):
    try:
        f()
        print(label, "ALLOWED")
    except Exception as e:
        print(label, "denied")
SECRET = %(secret)r
OUT = %(out)r
attempt("abs-read", lambda: open(SECRET).read())
attempt("dotdot-read", lambda: open("/../../../../../../.." + SECRET).read())
os.chdir("/")
attempt("rel-read", lambda: open("../../../../../../.." + SECRET).read())
attempt("dotdot-write", lambda: open("/../../../../../../.." + OUT, "w").write("x"))
attempt("execfile", lambda: execfile(SECRET))
attempt("remount-read", lambda: (vfs.mount(vfs.VfsPosix("/"), "/host"), open("/host" + SECRET).read()))
attempt("remount-write", lambda: open("/host" + OUT, "w").write("x"))
attempt("posix-root", lambda: vfs.VfsPosix("/").open(SECRET, "r").read())
attempt("symlink-read", lambda: open("/link/" + %(secret_name)r).read())
import sys
sys.path.insert(0, %(pkgdir)r)
attempt("import", lambda: __import__("hostmod"))
import ffi
libc = ffi.open("libc.so.6")
fopen = libc.func("p", "fopen", "ss")
def ffi_open():
    if not fopen(SECRET, "r"):
        raise OSError("fopen failed")
attempt("ffi-open", ffi_open)
os.system("cat %(secret)s > /dev/null && echo x > %(out)s")
print("listing", sorted(os.listdir("/")))
"""


@pytest.mark.skipif(not landlock(), reason="the kernel has no Landlock: only the VFS confines the board")
def test_code_cannot_reach_outside_flash(sim_board, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("host secret\n")
    pkgdir = outside / "pkgs"
    pkgdir.mkdir()
    (pkgdir / "hostmod.py").write_text("print('host module imported')\n")
    out = outside / "written.txt"
    # A symlink placed after boot (the board refuses to boot with one): the kernel still stops it.
    os.symlink(str(outside), str(sim_board.flash / "link"))
    code = ESCAPES % {"secret": str(secret), "out": str(out), "pkgdir": str(pkgdir),
                      "secret_name": secret.name}
    script = tmp_path / "escape.py"
    script.write_text(code)
    # `resume`: no soft reset, which would find the symlink and halt the board.
    res = sim_board.mpremote("resume", "run", str(script))
    lines = res.stdout.splitlines()
    assert "host module imported" not in res.stdout
    assert "host secret" not in res.stdout
    results = dict(line.split(" ", 1) for line in lines if line.endswith(("ALLOWED", "denied")))
    assert set(results) == {"abs-read", "dotdot-read", "rel-read", "dotdot-write", "execfile", "remount-read",
                            "remount-write", "posix-root", "symlink-read", "import", "ffi-open"}
    assert all(v == "denied" for v in results.values()), results
    assert not out.exists()
    assert sorted(os.listdir(outside)) == ["pkgs", "secret.txt"]
    # ".." at the root stays at the root: the write above landed inside the flash, if anywhere.
    assert not (tmp_path / "written.txt").exists()


def test_halts_when_flash_gains_a_symlink(sim_board):
    os.symlink("/etc", str(sim_board.flash / "etc"))
    res = sim_board.mpremote("exec", "print('ran')")  # soft reset: the boot finds the symlink
    assert res.returncode == 1
    assert "simulated board halted" in res.stdout and "symlink" in res.stdout and "ran" not in res.stdout
    os.unlink(str(sim_board.flash / "etc"))
    assert ok(sim_board.mpremote("exec", "print('ran')")).strip() == "ran"


def test_refuses_flash_with_symlink(tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    os.symlink("/etc", str(flash / "etc"))
    res = subprocess.run([UPYHUB, "sim-board", "--flash", str(flash)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "symlink" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_missing_flash_is_a_usage_error(tmp_path):
    res = subprocess.run([UPYHUB, "sim-board", "--flash", str(tmp_path / "nope")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith("upyhub: error: flash folder") and "Traceback" not in res.stderr


# --- the protocol, byte by byte (what pyexec.c sends) -----------------------------------------

class Port:
    def __init__(self, path):
        self.s = serial.Serial(path, 115200, timeout=0.1)
        self.buf = b""

    def expect(self, ending, timeout=30):
        deadline = time.monotonic() + timeout
        while ending not in self.buf:
            if time.monotonic() > deadline:
                raise AssertionError("expected %r, got %r" % (ending, self.buf))
            self.buf += self.s.read(4096)
        head, _, self.buf = self.buf.partition(ending)
        return head

    def read_exact(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            if time.monotonic() > deadline:
                raise AssertionError("expected %d bytes, got %r" % (n, self.buf))
            self.buf += self.s.read(n - len(self.buf))
        head, self.buf = self.buf[:n], self.buf[n:]
        return head

    def write(self, data):
        self.s.write(data)


@pytest.fixture
def port(sim_board):
    p = Port(sim_board.port)
    p.write(b"\r\x03")
    p.expect(b">>> ")
    p.write(b"print('sync')\r")
    p.expect(b"sync\r\n>>> ")
    yield p
    p.s.close()


def test_raw_repl_protocol(port):
    port.write(b"\x01")
    port.expect(b"raw REPL; CTRL-B to exit\r\n>")
    port.write(b"print('a')\x04")
    assert port.expect(b">") == b"OKa\n\x04\x04"
    port.write(b"raise ValueError('v')\x04")
    out = port.expect(b"\x04>")
    assert out.startswith(b"OK\x04Traceback") and out.endswith(b"ValueError: v\r\n")
    # Ctrl-C interrupts running code; the error part reports it.
    port.write(b"while True:\n    pass\x04")
    port.expect(b"OK")
    port.write(b"\x03")
    assert port.expect(b"\x04>").endswith(b"KeyboardInterrupt: \r\n")
    # sys.exit() in the raw REPL is a soft reset, as on a board.
    port.write(b"import sys\nsys.exit()\x04")
    port.expect(b"OK\x04\x04MPY: soft reboot\r\nraw REPL; CTRL-B to exit\r\n>")
    port.write(b"\x02")
    port.expect(b"Type \"help()\" for more information.\r\n>>> ")


def test_raw_paste_flow_control(port):
    port.write(b"\x01")
    port.expect(b"raw REPL; CTRL-B to exit\r\n>")
    port.write(b"\x05A\x01")
    # Accepted, window of 128 bytes (little-endian), and a first window granted.
    assert port.read_exact(5) == b"R\x01\x80\x00\x01"
    code = b"x = 0\n" + b"".join(b"x += %d\n" % i for i in range(100)) + b"print(x)\n"
    assert len(code) > 3 * 128
    window, sent, acks = 128, 0, 0
    while sent < len(code):
        chunk = code[sent:sent + window]
        port.write(chunk)
        sent += len(chunk)
        window -= len(chunk)
        if window == 0 and sent < len(code):
            port.expect(b"\x01")  # the board grants another window
            acks += 1
            window = 128
    port.write(b"\x04")
    port.expect(b"\x04")  # end of data acknowledged
    assert port.expect(b"\x04\x04>") == b"4950\n"
    assert acks >= 3
    port.write(b"\x05Z\x01")  # an unknown paste command is declined
    port.expect(b"R\x00>")


def test_friendly_repl(port):
    port.write(b"6*7\r")
    assert port.expect(b">>> ").endswith(b"42\r\n")
    port.write(b"for i in range(2):\r  print('i', i)\r\r")
    assert b"i 0\r\ni 1\r\n" in port.expect(b">>> ")
    port.write(b"\x04")
    port.expect(b"MPY: soft reboot\r\n")
    port.expect(b">>> ")
    port.write(b"'y' in globals()\r")
    assert port.expect(b">>> ").endswith(b"False\r\n")


def test_vfs_alone_keeps_paths_inside(tmp_path, start_sim_board):
    # Without the kernel sandbox: absolute paths, ".." and relative paths still resolve inside.
    flash = tmp_path / "flash"
    flash.mkdir()
    (tmp_path / "secret.txt").write_text("outside")
    board = start_sim_board(flash, "--unconfined")
    assert board.info["confinement"].startswith("none (--unconfined)")
    code = ("import os\n"
            "for p in ('/../secret.txt', '../secret.txt', '../../../../secret.txt', %r):\n"
            "    try:\n"
            "        open(p).read(); print('READ', p)\n"
            "    except OSError:\n"
            "        print('denied')\n"
            "os.mkdir('/d'); os.chdir('/d')\n"
            "open('../../../up.txt', 'w').write('x')\n"
            "print(sorted(os.listdir('/..')), os.getcwd())\n") % str(tmp_path / "secret.txt")
    out = ok(board.mpremote("exec", code)).split("\n")
    assert out[:4] == ["denied"] * 4
    assert out[4] == "['d', 'up.txt'] /d"
    assert (flash / "up.txt").read_text() == "x" and not (tmp_path / "up.txt").exists()
