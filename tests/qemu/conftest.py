"""The device package's protocol tests (tests/lib's own) on a microcontroller build: MicroPython's bare-metal
qemu port, Cortex-M3, with the package frozen into its flash (qemuboard.py, tools/setup/qemu.sh).

`run_mp` here replaces the unix port's (tests/conftest.py) for the tests collected in this folder, with the
same call: run_mp(code, heapsize=...) -> .returncode, .stdout, .stderr. Each call boots the board, mounts a
RAM disk at / and copies the test's tmp_path there at the same path (so the code's paths work unchanged),
sets the board's clock from the host's, holds the free heap the code sees to `heapsize` in one piece (the
rest is taken before the code is sent: the code, its compilation and its data share that piece, as under
the unix port's -X heapsize), runs the code, then copies tmp_path back, so the test's own checks on the host see
what the code wrote. `mpy` is moot (the code is frozen: neither .py nor .mpy), so the mpy=True variants
of parametrized tests are left out here; `env` and `path_extra` have no meaning on this board and are
refused.
"""
import pathlib
import subprocess
import sys
import time

import pytest

from qemuboard import ELF, UNAVAILABLE, QemuBoard

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lib"))  # tests/lib's modules

HEAP_CAP = """
import gc
gc.collect()
_room = bytearray(%d - 32)  # the heap the code will have, in one piece (32: the object itself, rounding)
_ballast, _n = [], gc.mem_free()
while _n >= 64:  # then everything else: the largest pieces that fit first
    try:
        _ballast.append(bytearray(_n - 32))
        _n = gc.mem_free()
    except MemoryError:
        _n //= 2
_room = None
gc.collect()
"""


def _bytes(size):
    size = str(size).upper()
    return int(size[:-1]) * {"K": 1024, "M": 1024 * 1024}[size[-1]] if size[-1] in "KM" else int(size)


@pytest.fixture(scope="session")
def qemu_elf():
    if UNAVAILABLE.exists():
        pytest.skip("the Cortex-M build cannot exist here: %s" % UNAVAILABLE.read_text().strip())
    if not ELF.exists():
        pytest.fail("build/qemu/firmware.elf is missing: run `make setup` (make test does it)")
    return ELF


@pytest.fixture
def run_mp(qemu_elf, tmp_path):
    def run(code, *, mpy=False, heapsize=None, env=None, timeout=60, path_extra=()):
        if env or path_extra:
            pytest.fail("run_mp(env=..., path_extra=...) has no meaning on the qemu board")
        size = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink())
        with QemuBoard(qemu_elf) as board:
            board.mount_ram_disk(max(128, size * 3 // 2048 + 96))  # KB: room for littlefs's metadata
            board.upload(tmp_path)
            board.run("import time\ntime.set(%d)" % int(time.time()))
            if heapsize:
                board.run(HEAP_CAP % _bytes(heapsize))
            out, err = board.exec(code, timeout)
            board.run("_ballast = None\nimport gc\ngc.collect()")
            board.download(tmp_path)
        return subprocess.CompletedProcess(["qemu-system-arm", str(qemu_elf)], 1 if err else 0, out, err)

    return run


def pytest_collection_modifyitems(config, items):
    here = pathlib.Path(__file__).resolve().parent
    moot = [i for i in items if here in pathlib.Path(str(i.fspath)).parents
            and getattr(i, "callspec", None) and i.callspec.params.get("mpy") is True]
    if moot:
        config.hook.pytest_deselected(items=moot)
        items[:] = [i for i in items if i not in moot]
