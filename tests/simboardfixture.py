"""pytest plugin: a running simulated board (`upyhub sim-board`) and the real mpremote against it.

Fixtures:
  sim_board   a board on a fresh flash folder (tmp); attributes .port, .flash (pathlib.Path),
              .mpremote(*args, timeout=60) -> CompletedProcess (real mpremote, `connect PORT` first),
              .start(**options) to restart with options, .stop().
  start_sim_board(flash, *extra_args) -> the same object for a given folder and CLI options.
"""
import os
import pathlib
import select
import subprocess
import sys
import time

import pytest
from polling import wait_until

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
UPYHUB = str(BIN / "upyhub")
MPREMOTE = str(BIN / "mpremote")


def landlock():
    from upyhub import sandbox

    return sandbox.abi() > 0


class SimBoardProcess:
    def __init__(self, flash, args=()):
        self.flash = pathlib.Path(flash)
        # Without Landlock in the kernel the board runs VFS-confined only (the tests that need
        # the kernel's confinement skip themselves).
        self.args = list(args) + ([] if landlock() else ["--unconfined"])
        self.proc = None
        self.port = None
        self.info = {}

    def start(self, deadline_s=60):
        self.proc = subprocess.Popen([UPYHUB, "sim-board", "--flash", str(self.flash)] + self.args,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + deadline_s
        fd = self.proc.stdout.fileno()
        buf = b""
        while "confinement" not in self.info:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                err = self.proc.stderr.read().decode() if self.proc.poll() is not None else "timeout"
                self.stop()
                raise RuntimeError("sim-board did not start: %s" % err)
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                key, _, value = line.decode().strip().partition(": ")
                self.info[key] = value
        self.port = self.info["port"]
        return self

    def mpremote(self, *args, timeout=60, input=None):
        return subprocess.run([MPREMOTE, "connect", self.port] + list(args), capture_output=True, text=True,
                              timeout=timeout, input=input)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            for f in (self.proc.stdout, self.proc.stderr):
                f.close()


def wait_for(cond, timeout=60, interval=0.05):
    return wait_until(cond, timeout, interval=interval)


@pytest.fixture
def start_sim_board():
    boards = []

    def start(flash, *args):
        board = SimBoardProcess(flash, args).start()
        boards.append(board)
        return board

    yield start
    for board in boards:
        board.stop()


@pytest.fixture
def sim_board(tmp_path, start_sim_board):
    flash = tmp_path / "flash"
    flash.mkdir()
    return start_sim_board(flash)
