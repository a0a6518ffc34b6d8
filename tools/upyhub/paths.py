"""Where things are in a checkout (the host tools run from the repo's .venv)."""
import importlib
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIB = ROOT / "lib"
FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "boards"
BUILD = ROOT / "build"
UMQTT = BUILD / "umqtt"


def device_module(name):
    """lib/iothub/<name>.py imported under CPython, so the host checks with the device's own code."""
    lib = str(LIB)
    if lib not in sys.path:
        sys.path.insert(0, lib)
    return importlib.import_module("iothub." + name)


def micropython():
    """The unix port set up by `make` (build/micropython), else one on PATH."""
    built = BUILD / "micropython"
    if built.exists():
        return str(built)
    found = shutil.which("micropython")
    if found:
        return found
    raise FileNotFoundError("no MicroPython unix port: run `make setup` first")
