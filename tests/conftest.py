"""Fixtures shared by every test: the MicroPython unix port as a subprocess."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MICROPYTHON = ROOT / "build" / "micropython"
SRC_LIB = ROOT / "lib"
MPY_LIB = ROOT / "build" / "mpy" / "lib"
UMQTT = ROOT / "build" / "umqtt"

# Fixtures every folder may use: a running local hub, a running simulated board, test certificates.
pytest_plugins = ["hubfixture", "simboardfixture", "certhelpers"]


@pytest.fixture(scope="session")
def micropython():
    if not MICROPYTHON.exists():
        pytest.fail("build/micropython is missing: run `make setup` (make test does it)")
    return str(MICROPYTHON)


def mp_path(mpy=False, extra=()):
    """MICROPYPATH for sources (lib/ + umqtt) or for the compiled board tree."""
    dirs = [str(MPY_LIB)] if mpy else [str(SRC_LIB), str(UMQTT)]
    return os.pathsep.join(list(extra) + dirs)


def _ensure_mpy_fresh():
    """Recompile build/mpy when a device source is newer than it (tests run .mpy too)."""
    stamp = ROOT / "build" / "mpy" / ".stamp"
    sources = [p for d in ("lib", "firmware", "boards") for p in (ROOT / d).rglob("*.py")]
    if stamp.exists() and all(p.stat().st_mtime <= stamp.stat().st_mtime for p in sources):
        return
    subprocess.run([str(ROOT / ".venv" / "bin" / "upyhub"), "build", "--board", "unix",
                    "--out", str(ROOT / "build" / "mpy"), "--quiet"], check=True)
    stamp.touch()


@pytest.fixture(scope="session")
def mpy_tree():
    _ensure_mpy_fresh()
    return ROOT / "build" / "mpy"


@pytest.fixture(scope="session")
def run_mp(micropython, mpy_tree):
    def run(code, *, mpy=False, heapsize=None, env=None, timeout=60, path_extra=()):
        cmd = [micropython]
        if heapsize:
            cmd += ["-X", "heapsize=%s" % heapsize]
        cmd += ["-c", code]
        full_env = dict(os.environ, MICROPYPATH=mp_path(mpy, path_extra))
        full_env.update(env or {})
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)

    return run
