"""The emulated Pico (upyhub.pico: build/rp2's firmware on rp2040js) as tests drive a board: its USB serial
port through mpremote's own transport (raw REPL, raw-paste), files of a host folder up and down
(rawboard.BoardFiles), power cuts and the emulator's counters through the Pico object."""
import pathlib
import queue
import time

from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from rawboard import BoardError, BoardFiles
from upyhub import pico as pico_mod

ROOT = pathlib.Path(__file__).resolve().parents[2]


class PicoBoard(BoardFiles):
    def __init__(self, image, **kw):
        self.pico = pico_mod.Pico(image, **kw)
        self.transport = None
        try:
            self.port = self.pico.start()
            self.connect()
        except Exception:
            self.close()
            raise

    def connect(self, timeout=30):
        """(Re)open the serial port and enter the raw REPL (Ctrl-C stops whatever runs: main.py too)."""
        self.disconnect()
        self.transport = SerialTransport(self.port, 115200)
        self.transport.enter_raw_repl(soft_reset=False, timeout_overall=timeout)

    def disconnect(self):
        if self.transport is not None:
            try:
                self.transport.close()
            except OSError:
                pass
            self.transport = None

    def exec(self, code, timeout=60):
        """Run code in the raw REPL: (stdout, the traceback or ''), newlines as "\\n". timeout: seconds the
        board may stay silent."""
        try:
            out, err = self.transport.exec_raw(code, timeout=timeout)
        except TransportError as exc:
            raise BoardError("the Pico did not finish the code: %s%s" % (exc, self.pico._died()))
        return (out.decode(errors="replace").replace("\r\n", "\n"),
                err.decode(errors="replace").replace("\r\n", "\n"))

    def run(self, code, timeout=60):
        out, err = self.exec(code, timeout)
        if err:
            raise BoardError(err)
        return out

    def exec_until_cut(self, code, timeout=120):
        """Run code that a power cut (armed with pico.cut) may stop: (stdout, error, cut). A cut leaves what the
        code printed up to the moment the power went."""
        self.transport.exec_raw_no_follow(code)
        got = bytearray()
        deadline = time.monotonic() + timeout
        serial = self.transport.serial
        while True:
            waiting = serial.in_waiting
            if waiting:
                got += serial.read(waiting)
            if got.count(b"\x04") >= 2:
                out, err = bytes(got).split(b"\x04")[:2]
                return out.decode(errors="replace").replace("\r\n", "\n"), err.decode(errors="replace"), False
            try:
                ev = self.pico.events.get(timeout=0.05)
            except queue.Empty:
                ev = {}
            if ev.get("event") in ("cut", "off"):
                time.sleep(0.2)  # the last bytes the board sent before the power went
                got += serial.read(serial.in_waiting)
                out = bytes(got).split(b"\x04")[0]
                return out.decode(errors="replace").replace("\r\n", "\n"), "", True
            if time.monotonic() > deadline:
                raise BoardError("the code neither finished nor lost power within %d s%s" % (timeout, self.pico._died()))

    def power_on(self):
        """Power on after a cut and reopen the raw REPL on the fresh boot."""
        self.disconnect()
        self.pico.power("on")
        self.pico.wait_event("boot", 30)
        self.connect()

    def close(self):
        self.disconnect()
        self.pico.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The board's RTC from the host's clock (UTC), as SNTP sets it on a running board.
SET_CLOCK = """
import machine, time
_t = time.gmtime(%d)
machine.RTC().datetime((_t[0], _t[1], _t[2], _t[6] + 1, _t[3], _t[4], _t[5], 0))
"""
