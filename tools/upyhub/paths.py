"""Where things are in a checkout (the host tools run from the repo's .venv)."""
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIB = ROOT / "lib"
FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "boards"
BUILD = ROOT / "build"
UMQTT = BUILD / "umqtt"


def micropython():
    """The unix port set up by `make` (build/micropython), else one on PATH."""
    built = BUILD / "micropython"
    if built.exists():
        return str(built)
    found = shutil.which("micropython")
    if found:
        return found
    raise FileNotFoundError("no MicroPython unix port: run `make setup` first")
