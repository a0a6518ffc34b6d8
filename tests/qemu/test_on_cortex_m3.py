"""tests/lib's protocol tests again, on a microcontroller: MicroPython's bare-metal qemu port (Cortex-M3,
MPS2-AN385 under qemu-system-arm) with the device package frozen into its flash. The tests are imported
from tests/lib unchanged; conftest.py's run_mp runs their device code on the emulated board.

Left out: what needs a network or TLS (the port has neither: the certificate store's trials over TLS, the
session), a unix-only tool (ffi power cuts, .mpy trees on MICROPYPATH), a host file outside the test's
folder (certifi's bundle) or files larger than the board's RAM disk (a 4 MB config.json)."""
import ast

from onchip import *  # noqa: F401,F403  (tests/lib's protocol tests, collected here)
from rawboard import check_heap_cap


def test_it_is_the_cortex_m_board_running_frozen_code(run_mp):
    # Not the unix port: the machine qemu emulates, and the package comes from flash (no .py/.mpy file).
    p = run_mp("import sys, iothub.sas\nprint(sys.platform, sys.implementation._machine)\n"
               "print(sys.path)\nimport os\nprint(sorted(os.listdir('/lib')))")
    assert p.returncode == 0, p.stderr
    platform, path, files = p.stdout.splitlines()
    assert platform == "qemu mps2-an385 with Cortex-M3"
    assert ".frozen" in ast.literal_eval(path)
    assert ast.literal_eval(files) == ["socket.py", "time.py", "tls.py"]  # only the harness's stand-ins


def test_heapsize_holds_the_code_to_a_board_sized_heap(run_mp):
    check_heap_cap(run_mp)
