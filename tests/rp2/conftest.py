"""The firmware on a real RP2040 image: MicroPython's rp2 port for boards/rp2_pico_ppp (build/rp2, made by
tools/setup/rp2.sh) on the emulated Pico (tools/pico, upyhub.pico), its filesystem the rp2 port's littlefs
on the chip's flash driver.

`run_mp` here replaces the unix port's (tests/conftest.py) for the tests collected in this folder, with the
same call, as tests/qemu's does: each call powers a Pico with a fresh flash on, copies the test's tmp_path
to the same path on its littlefs, sets its clock from the host's, holds its free heap to `heapsize` in one
piece, runs the code, copies tmp_path back. The package is frozen (mpy=True variants are left out); `env`
and `path_extra` have no meaning on this board. Where the image or the emulator cannot exist here (see
build/rp2/UNAVAILABLE), these tests are skipped with the reason.
"""
import pathlib
import sys

import pytest

from picoboard import SET_CLOCK, PicoBoard
from rawboard import deselect_mpy_variants
from upyhub import pico as pico_mod
from upyhub import ppplink

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "lib"))  # tests/lib's modules


@pytest.fixture(scope="session")
def pico_image():
    why = pico_mod.why_unavailable()
    if why:
        pytest.skip("the emulated Pico cannot run here: %s" % why)
    return pico_mod.FIRMWARE


@pytest.fixture(scope="session")
def pico_network(pico_image):
    why = ppplink.why_unavailable()
    if why:
        pytest.skip("the emulated Pico has no network here: %s" % why)
    return True


@pytest.fixture
def run_mp(pico_image, tmp_path_factory, tmp_path):
    flash_dir = tmp_path_factory.mktemp("pico-flash")

    def run(code, *, mpy=False, heapsize=None, env=None, timeout=60, path_extra=()):
        if env or path_extra:
            pytest.fail("run_mp(env=..., path_extra=...) has no meaning on the Pico")
        image = flash_dir / ("flash-%d.img" % len(list(flash_dir.iterdir())))
        # flash_timing off: these check protocol logic, not flash wear (tests/rp2/test_outbox_on_pico.py does)
        try:
            with PicoBoard(image, network=False, flash_timing=False) as board:
                return board.run_test_code(tmp_path, code, heapsize, timeout, SET_CLOCK)
        finally:
            image.unlink(missing_ok=True)

    return run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # A failed session test shows what the board printed since its last boot (a timeout from pytest-timeout
    # otherwise shows only the host's threads). Since a boot: provisioning's raw-REPL traffic, which carries
    # the device's key, comes before the reset that boots main.py.
    rep = yield
    pico = item.funcargs.get("pico") if rep.when == "call" and rep.failed else None
    if isinstance(pico, pico_mod.Pico):
        text = pico.console()[pico.last_boot:].decode(errors="replace").replace("\r\n", "\n")
        rep.sections.append(("the board's console since its last boot", text[-4000:]))
    return rep


def pytest_collection_modifyitems(config, items):
    deselect_mpy_variants(config, items, pathlib.Path(__file__).resolve().parent)
