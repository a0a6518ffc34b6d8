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
import sys

import pytest

from qemuboard import ELF, UNAVAILABLE, QemuBoard
from rawboard import deselect_mpy_variants

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lib"))  # tests/lib's modules


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
            return board.run_test_code(tmp_path, code, heapsize, timeout, "import time\ntime.set(%d)")

    return run


def pytest_collection_modifyitems(config, items):
    deselect_mpy_variants(config, items, pathlib.Path(__file__).resolve().parent)
