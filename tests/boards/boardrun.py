"""Running a board module on the unix port with the stand-ins of tests/boards/standins/ (shared by the
tests of tests/boards; the `compiled` fixture of conftest.py gives the .mpy folders)."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
STANDINS = str(ROOT / "tests" / "boards" / "standins")
BOARD_DIRS = ("esp32", "rp2_pico_w", "rp2_pico_ppp")  # boards/ folders with a board module for a chip
FLAVOURS = {"esp32": "esp32", "rp2_pico_w": "rp2", "rp2_pico_ppp": "rp2"}  # board -> stand-in network's codes


def compile_boards(tmp_path_factory):
    """Each board module compiled by mpy-cross (bytecode: loads on the unix port too): board -> folder."""
    out = {}
    for name in BOARD_DIRS:
        d = tmp_path_factory.mktemp("mpy-" + name)
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(d / "board.mpy"),
                        str(ROOT / "boards" / name / "board.py")], check=True)
        out[name] = str(d)
    return out


def run_board(run_mp, board, body, *, mpy=False, compiled=None, heapsize=None):
    """Run `body` with `board`, the stand-ins and fast retry pauses; returns the JSON it prints last."""
    board_dir = compiled[board] if mpy else str(ROOT / "boards" / board)
    code = ("import json, time, network, ntptime, machine\n"
            "network.use(%r)\n"
            "import board\n"
            "board.BACKOFF_MS = 5\n"
            "board._POLL_MS = 5\n" % FLAVOURS[board]) + body
    proc = run_mp(code, mpy=mpy, heapsize=heapsize, path_extra=(STANDINS, board_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
