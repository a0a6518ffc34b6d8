"""MicroPython's bare-metal qemu port as a board: an emulated Cortex-M3 (MPS2-AN385, qemu-system-arm)
running build/qemu/firmware.elf (tools/setup/qemu.sh), its UART on this process's pipes, code sent
through the raw REPL as mpremote does. The device package is frozen in its flash; a RAM disk (littlefs
on a block device in the Python heap) mounted at / holds what the tests put there."""
import os
import pathlib
import select
import subprocess
import time

from upyhub.bench._blockdev import RAM_FLASH

from rawboard import BoardError, BoardFiles

ROOT = pathlib.Path(__file__).resolve().parents[2]
ELF = ROOT / "build" / "qemu" / "firmware.elf"
UNAVAILABLE = ROOT / "build" / "qemu" / "UNAVAILABLE"
STANDINS = pathlib.Path(__file__).resolve().parent / "standins"

# The RAM disk: littlefs on 512-byte blocks (as tests/flashimage.py's image) in the heap, mounted at /.
RAMDISK = RAM_FLASH + """
import gc, os, sys, vfs
_disk = RAMFlash(%d, 512)
vfs.VfsLfs2.mkfs(_disk)
vfs.mount(vfs.VfsLfs2(_disk), "/")
os.mkdir("/lib")
sys.path.append("/lib")
"""


class QemuBoard(BoardFiles):
    def __init__(self, elf=ELF, boot_timeout=60):
        self.proc = subprocess.Popen(
            ["qemu-system-arm", "-machine", "mps2-an385", "-nographic", "-monitor", "none", "-semihosting",
             "-serial", "stdio", "-kernel", str(elf)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        self._buf = b""
        self._write(b"\r\x03\x03\x01")  # interrupt whatever runs, then the raw REPL
        self._read_until(b"raw REPL; CTRL-B to exit\r\n>", boot_timeout)

    def _write(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _read_until(self, token, timeout):
        deadline = time.monotonic() + timeout
        while token not in self._buf:
            left = deadline - time.monotonic()
            ready = select.select([self.proc.stdout], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                raise BoardError("no %r from the board within %d s; it said: %r" % (token, timeout, self._buf[-500:]))
            data = os.read(self.proc.stdout.fileno(), 65536)
            if not data:
                raise BoardError("qemu exited (%s); the board said: %r" % (self.proc.poll(), self._buf[-500:]))
            self._buf += data
        at = self._buf.index(token) + len(token)
        got, self._buf = self._buf[:at - len(token)], self._buf[at:]
        return got

    def exec(self, code, timeout=60):
        """Run code in the raw REPL: (stdout, the traceback or ''), with newlines as "\\n"."""
        self._write(code.encode() + b"\x04")
        self._read_until(b"OK", timeout)
        out = self._read_until(b"\x04", timeout)
        err = self._read_until(b"\x04", timeout)
        self._read_until(b">", timeout)
        return out.decode(errors="replace").replace("\r\n", "\n"), err.decode(errors="replace").replace("\r\n", "\n")

    def run(self, code, timeout=60):
        """exec() that raises BoardError when the code raised."""
        out, err = self.exec(code, timeout)
        if err:
            raise BoardError(err)
        return out

    # --- the RAM disk ---
    def mount_ram_disk(self, kb):
        self.run(RAMDISK % (kb * 2))
        for p in sorted(STANDINS.glob("*.py")):
            self.put("/lib/" + p.name, p.read_bytes())

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
