"""tests/lib's protocol tests again, on the chip: MicroPython's rp2 port for a Raspberry Pi Pico (build/rp2) on
the emulated Pico, the device package frozen into its flash, its filesystem the rp2 port's littlefs on the
chip's flash driver. The tests are imported from tests/lib unchanged; conftest.py's run_mp runs their device
code on the board.

Left out: what needs a TLS peer on the host (the root store's trials over TLS: test_session_on_pico.py runs
them through the hub), a unix-only tool (ffi power cuts: test_power_cuts_on_pico.py cuts the chip's own power,
.mpy trees on MICROPYPATH), a host file (certifi's bundle) or files larger than a board is ever given (a 4 MB
config.json, a flash filled to the last block: minutes of emulated flash writes, and the unix port covers it)."""
import ast

from onchip import *  # noqa: F401,F403  (tests/lib's protocol tests for every board, collected here)
from rawboard import check_heap_cap
from test_config import (  # noqa: F401  (and what this board's network stack and flash allow besides)
    test_dps_and_token_service_settings,
    test_outbox_larger_than_the_flash_is_not_a_config_error,
)
from test_outbox import (  # noqa: F401
    test_full_drops_the_oldest_or_refuses,
    test_one_at_a_time_across_segments_every_message_is_sent,
    test_order_acks_and_recovery_after_a_reboot,
    test_ram_outbox,
    test_rewind_sends_again_from_the_first_unacknowledged,
    test_torn_tail_corrupt_middle_and_older_format,
)
from test_rootupdate import test_a_flash_that_cannot_be_written_is_a_500  # noqa: F401


def test_it_is_the_rp2040_running_frozen_code(run_mp):
    # Not the unix port: the rp2 port on an RP2040, the package from the firmware (no file on the flash), the
    # flash a littlefs of the Pico's 1.4 MB filesystem, the network stack there.
    p = run_mp("import sys, os, iothub.sas, network, tls\nprint(sys.platform, sys.implementation._machine)\n"
               "print(sys.path)\nprint(iothub.sas.__file__)\nprint(os.statvfs('/')[:3])\nprint(network.PPP.__name__)")
    assert p.returncode == 0, p.stderr
    platform, path, where, fs, ppp = p.stdout.splitlines()
    assert platform == "rp2 Raspberry Pi Pico (PPP modem) with RP2040"
    assert ast.literal_eval(path) == ["", ".frozen", "/lib"]
    assert where == "iothub/sas.py"  # frozen: not a path on the filesystem
    assert ast.literal_eval(fs) == (4096, 4096, 352)  # 352 blocks of 4 KB: 1408 KB
    assert ppp == "PPP"


def test_heapsize_holds_the_code_to_a_board_sized_heap(run_mp):
    check_heap_cap(run_mp)
