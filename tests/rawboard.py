"""What the on-chip test harnesses share (tests/qemu's Cortex-M3, tests/rp2's emulated Pico): a board reached
through its raw REPL (`run(code, timeout)` -> stdout, raising BoardError with the traceback) gets a host
folder copied to the same path on its filesystem and back, and its free heap held to a board's size.

`run_mp` on those boards keeps the unix port's call (tests/conftest.py): run_mp(code, heapsize=...) ->
.returncode, .stdout, .stderr, so tests/lib's tests are imported and run there unchanged."""
import base64
import hashlib
import json
import pathlib
import subprocess
import time

from upyhub.mpr import HEAP_CAP, HEAP_FREE, WALK

CHUNK = 12288  # bytes of a file per raw-REPL command

# Every file below a folder with its SHA-256 (upyhub.mpr's board-side walk), folders ending in "/".
LIST = WALK + """
import json
_all = []
try:
    _walk(%r, _all)
except OSError:
    _all = None
print(json.dumps(None if _all is None else {p: "" if p.endswith("/") else _h(p) for p in _all}))
"""



class BoardError(Exception):
    pass


def heap_bytes(size):
    """'64K' -> 65536, as the unix port's -X heapsize reads it."""
    size = str(size).upper()
    return int(size[:-1]) * {"K": 1024, "M": 1024 * 1024}[size[-1]] if size[-1] in "KM" else int(size)


class BoardFiles:
    """Files of a board reached through run(code, timeout) -> stdout (BoardError when the code raised)."""

    def put(self, path, data):
        self.run("_f = open(%r, 'wb')" % path)
        for i in range(0, len(data), CHUNK):
            self.run("import binascii\n_f.write(binascii.a2b_base64(%r))" % base64.b64encode(data[i:i + CHUNK]).decode())
        self.run("_f.close()\ndel _f")

    def get(self, path):
        out = bytearray()
        self.run("_f = open(%r, 'rb')" % path)
        while True:
            text = self.run("import binascii\nprint(binascii.b2a_base64(_f.read(%d), newline=False).decode())" % CHUNK)
            chunk = base64.b64decode(text.strip())
            if not chunk:
                break
            out += chunk
        self.run("_f.close()\ndel _f")
        return bytes(out)

    def mkdirs(self, path):
        self.run("import os\n_p = ''\nfor _n in %r.strip('/').split('/'):\n    _p += '/' + _n\n    try:\n"
                 "        os.mkdir(_p)\n    except OSError:\n        pass" % path)

    def upload(self, folder):
        """Copy a host folder (every file and folder below it) to the same path on the board."""
        folder = pathlib.Path(folder)
        self.mkdirs(str(folder))
        for p in sorted(folder.rglob("*")):
            if p.is_symlink():
                continue
            if p.is_dir():
                self.mkdirs(str(p))
            elif p.is_file():
                self.put(str(p), p.read_bytes())

    def download(self, folder):
        """Make the host folder what the board's copy became: changed and new files written, removed ones removed."""
        folder = pathlib.Path(folder)
        seen = json.loads(self.run(LIST % str(folder)).strip().splitlines()[-1])
        if seen is None:
            return
        for p, digest in sorted(seen.items()):
            host = pathlib.Path(p)
            if p.endswith("/"):
                host.mkdir(parents=True, exist_ok=True)
            elif not host.is_file() or hashlib.sha256(host.read_bytes()).hexdigest() != digest:
                host.write_bytes(self.get(p))
        for p in sorted(folder.rglob("*"), reverse=True):
            if p.is_symlink() or (str(p) + "/" if p.is_dir() else str(p)) in seen:
                continue
            if p.is_dir():
                p.rmdir()
            else:
                p.unlink()

    def run_test_code(self, tmp_path, code, heapsize, timeout, set_clock):
        """run_mp's work on a booted board: tmp_path up, the clock set from the host's, the heap capped, the
        code run, tmp_path back. Returns a CompletedProcess like the unix port's."""
        self.upload(tmp_path)
        self.run(set_clock % int(time.time()))
        if heapsize:
            self.run(HEAP_CAP % heap_bytes(heapsize))
        out, err = self.exec(code, timeout)
        self.run(HEAP_FREE)
        self.download(tmp_path)
        return subprocess.CompletedProcess(["board"], 1 if err else 0, out, err)


def deselect_mpy_variants(config, items, here):
    """The mpy=True variants of parametrized tests are moot on a board whose package is frozen."""
    moot = [i for i in items if here in pathlib.Path(str(i.fspath)).parents
            and getattr(i, "callspec", None) and i.callspec.params.get("mpy") is True]
    if moot:
        config.hook.pytest_deselected(items=moot)
        items[:] = [i for i in items if i not in moot]


def check_heap_cap(run_mp):
    """What the unix port's -X heapsize does, on a board through run_mp: 24 KB fit in a 32 KB heap, 40 KB do not."""
    code = "import gc\ngc.collect()\nprint(gc.mem_free())\nx = bytearray(%d)\nprint('allocated')"
    fits = run_mp(code % (24 * 1024), heapsize="32K")
    assert fits.returncode == 0, fits.stderr
    assert 28 * 1024 < int(fits.stdout.split()[0]) <= 34 * 1024  # 32 KB in one piece, crumbs of a few blocks
    too_big = run_mp(code % (40 * 1024), heapsize="32K")
    assert too_big.returncode == 1 and "MemoryError" in too_big.stderr and "allocated" not in too_big.stdout
