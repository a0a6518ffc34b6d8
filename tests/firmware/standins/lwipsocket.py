# Stand-in (MicroPython): the socket module with lwIP's timeout rules, as on ESP32 and rp2 boards.
# `import lwipsocket` installs it as `socket`/`usocket` before anything else imports them.
#   settimeout(None), setblocking(True)  blocking with no timeout: setblocking(True) CLEARS an
#                                        earlier settimeout(t) (the unix port keeps it)
#   settimeout(0), setblocking(False)    non-blocking: EAGAIN when nothing is ready
#   settimeout(t)                        a read or write that waits longer than t fails with
#                                        ETIMEDOUT (the unix port answers EAGAIN, which mbed TLS
#                                        turns into an endless retry)
# Every setblocking(True) that clears a timeout prints a line: the tests assert there is none.
import io
import select
import sys

import usocket as _real

EAGAIN = 11
ETIMEDOUT = 110
_POLL = 3
_CLOSE = 4


class socket(io.IOBase):
    def __init__(self, af=_real.AF_INET, kind=_real.SOCK_STREAM, proto=0):
        self._s = _real.socket(af, kind, proto)
        self._t = None
        self._p = None

    def settimeout(self, t):
        self._t = t

    def setblocking(self, flag):
        if flag and self._t:
            print("lwip: setblocking(True) cleared a %s s timeout: reads may now block forever" % self._t)
        self._t = None if flag else 0

    def setsockopt(self, *a):
        self._s.setsockopt(*a)

    def connect(self, addr):
        self._s.connect(addr)  # loopback: immediate
        self._s.setblocking(False)
        self._p = select.poll()
        self._p.register(self._s, select.POLLIN)

    def _ready(self, event):
        # Wait as lwIP would: forever (None), not at all (0) or up to the timeout.
        if self._t == 0:
            return False
        self._p.modify(self._s, event)
        try:
            return bool(self._p.poll(-1 if self._t is None else int(self._t * 1000)))
        finally:
            self._p.modify(self._s, select.POLLIN)

    def _io(self, op, buf, event):
        while True:
            try:
                n = op(buf)
            except OSError as e:
                if e.args[0] != EAGAIN:
                    return -e.args[0]
                n = None
            if n is not None:
                return n
            if self._t == 0:
                return None  # EAGAIN
            if not self._ready(event):
                return -ETIMEDOUT

    def readinto(self, buf):
        return self._io(self._s.readinto, buf, select.POLLIN)

    def write(self, buf):
        return self._io(self._s.write, buf, select.POLLOUT)

    def read(self, n):
        buf = bytearray(n)
        k = self.readinto(buf)
        if k is None:
            return None
        if k < 0:
            raise OSError(-k)
        return bytes(buf[:k])

    def ioctl(self, req, arg):
        if req == _POLL:
            if self._p is None:
                return 0
            self._p.modify(self._s, arg)
            try:
                ev = self._p.poll(0)
            finally:
                self._p.modify(self._s, select.POLLIN)
            return ev[0][1] if ev else 0
        if req == _CLOSE:
            self._s.close()
            return 0
        return -22

    def close(self):
        self._s.close()


class _Module:
    pass


_m = _Module()
for _name in dir(_real):
    if _name.startswith("_"):
        continue
    setattr(_m, _name, getattr(_real, _name))
_m.socket = socket
sys.modules["socket"] = _m
sys.modules["usocket"] = _m
