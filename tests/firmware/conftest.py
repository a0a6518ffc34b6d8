"""Fixtures for the firmware tests: the real firmware (compiled .mpy) on the unix port as a
subprocess, with a temporary folder as its flash, and small CPython TLS servers that record
everything a device sends them (helpers in fwtools.py)."""
import subprocess

import pytest
import trustme

from fwtools import ROOT, Device, Recorder


@pytest.fixture(scope="session")
def fw_tree(tmp_path_factory):
    """The board tree compiled once for this test run (a private copy: other runs may rebuild build/mpy)."""
    out = tmp_path_factory.mktemp("fw") / "mpy"
    subprocess.run([str(ROOT / ".venv" / "bin" / "upyhub"), "build", "--board", "unix", "--out", str(out), "--quiet"],
                   check=True, cwd=ROOT)
    return out


@pytest.fixture
def device(fw_tree):
    """device(flash, heapsize=None, executable=None) -> Device; every one started is stopped after the test.
    executable: another MicroPython unix port to run instead of build/micropython."""
    started = []

    def start(flash, heapsize=None, source=False, path_extra=(), executable=None, preload=()):
        d = Device(flash, fw_tree, heapsize=heapsize, source=source, path_extra=path_extra, executable=executable,
                   preload=preload)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def recorder():
    made = []

    def make(ctx=None):
        r = Recorder(ctx)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture(scope="session")
def pki():
    """A hub CA (the one devices pin) and an unrelated CA."""
    return {"ca": trustme.CA(), "other": trustme.CA()}
