# The simulated board's "firmware": MicroPython code, run by the unix port for one boot of the
# board (started by upyhub.simboard; CPython never imports it). It mounts the flash folder as
# the filesystem root, then executes the jobs the host sends over a pipe in one global namespace
# (the board's __main__), answering on another. Serial input reaches the code as sys.stdin (fd 0),
# its output goes to the serial line through fd 1/2. The host turns Ctrl-C into SIGINT.
#
# The host's bootstrap (simboard.BOOTSTRAP) reads this source from the job pipe (argv items
# must stay under 256 bytes on the unix port), then a JSON line: the host path of the flash
# folder, its size in bytes (0: unlimited) and machine.unique_id() in hex.
import sys
import os
import io
import json
import struct
import time
import vfs
import micropython

_cin = _jobs  # noqa: F821 (the bootstrap's file object on the job pipe)
globals().pop("s", None)  # the bootstrap's copy of this source: RAM a board would not spend
_cout = open(int(sys.argv[2]), "wb")
_conf = json.loads(_cin.readline())
_ROOT, _QUOTA, _UID = _conf["root"], _conf["size"], _conf["uid"]

# Job kinds (host -> board) and messages (board -> host).
J_EXEC, J_SINGLE, J_FILE = 1, 2, 3
M_STARTED, M_DONE, M_RESET, M_KBD = b"S", b"D", b"R", b"K"
ST_OK, ST_EXC, ST_EXIT = 0, 1, 2
ENOSPC, EINVAL, ENOTDIR = 28, 22, 20


def _send(kind, seq=0, data=b""):
    # One write: the host reads whole messages, and a Ctrl-C cannot split it.
    _cout.write(kind + struct.pack("<II", seq, len(data)) + data)


# Ctrl-C: the unix port raises KeyboardInterrupt on SIGINT while its handler is installed
# (micropython.kbd_intr(3)); kbd_intr(-1) would restore the default action and let a late
# SIGINT kill the board, so outside user code SIGINT is ignored (through ffi when it exists).
try:
    import ffi

    _signal = ffi.open("libc.so.6").func("p", "signal", "ip")
except Exception:
    _signal = None


def _intr_off():
    if _signal:
        _signal(2, 1)  # SIGINT -> SIG_IGN
    else:
        micropython.kbd_intr(-1)


def _intr_on():
    micropython.kbd_intr(3)


_intr_off()


def _norm(cwd, path):
    # Lexical normalisation like a board's VFS: ".." stops at "/", so nothing above the root.
    if isinstance(path, bytes):
        path = path.decode()
    if "\x00" in path:
        raise OSError(EINVAL)
    if path[:1] != "/":
        path = cwd + "/" + path
    parts = []
    for p in path.split("/"):
        if p == "..":
            if parts:
                parts.pop()
        elif p and p != ".":
            parts.append(p)
    return "/" + "/".join(parts)


class _Flash:
    """The board's root filesystem: a VfsPosix rooted at the flash folder, reached only
    through normalised absolute paths (VfsPosix itself passes relative paths and ".." through
    to the host). With a size, writes past it fail with ENOSPC like a full board."""

    def __init__(self, root, size):
        self._p = vfs.VfsPosix(root)
        self._cwd = "/"
        self.size = size
        self.used = self._du("/") if size else 0

    def _du(self, path):
        total = 0
        for name, kind, _ in self._p.ilistdir(path):
            sub = path.rstrip("/") + "/" + name
            if kind == 0x4000:
                total += self._du(sub)
            else:
                total += self._p.stat(sub)[6]
        return total

    def _fsize(self, path):
        try:
            st = self._p.stat(path)
        except OSError:
            return 0
        return 0 if st[0] & 0x4000 else st[6]

    def __repr__(self):
        return "<SimFlash>"

    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        p = _norm(self._cwd, path)
        if not self.size or not ("w" in mode or "a" in mode or "+" in mode):
            return self._p.open(p, mode)
        old = self._fsize(p)
        f = self._p.open(p, mode)
        if "w" in mode:
            self.used -= old
        return _SizedFile(f, self)

    def chdir(self, path):
        p = _norm(self._cwd, path)
        if not self._p.stat(p)[0] & 0x4000:
            raise OSError(ENOTDIR)
        self._cwd = p

    def getcwd(self):
        return self._cwd

    def ilistdir(self, path):
        # (name, type, inode, size) like littlefs/FAT boards (VfsPosix gives no size).
        p = _norm(self._cwd, path).rstrip("/") + "/"
        for name, kind, ino in self._p.ilistdir(p):
            if isinstance(name, str) and kind != 0x4000:
                size = self._fsize(p + name)
            else:
                size = 0
            yield (name, kind, ino, size)

    def mkdir(self, path):
        self._p.mkdir(_norm(self._cwd, path))

    def remove(self, path):
        p = _norm(self._cwd, path)
        n = self._fsize(p)
        self._p.remove(p)
        self.used -= n

    def rename(self, old, new):
        o, n = _norm(self._cwd, old), _norm(self._cwd, new)
        gone = self._fsize(n)
        # 1.25's VfsPosix.rename builds both rooted paths in one buffer (the first is lost), so
        # rename relative to the flash folder, made the process's working directory first.
        self._p.chdir("/")
        self._p.rename(o[1:] or ".", n[1:] or ".")
        self.used -= gone

    def rmdir(self, path):
        self._p.rmdir(_norm(self._cwd, path))

    def stat(self, path):
        return self._p.stat(_norm(self._cwd, path))

    def statvfs(self, path):
        st = self._p.statvfs(_norm(self._cwd, path))
        if not self.size:
            return st
        bs = 4096
        free = max(self.size - self.used, 0) // bs
        return (bs, bs, self.size // bs, free, free, 0, 0, 0, 0, st[9])


class _SizedFile(io.IOBase):
    # A file opened for writing on a flash with a size: counts what it adds.
    def __init__(self, f, flash):
        self._f = f
        self._flash = flash

    def write(self, buf):
        n = len(buf)
        if self._flash.used + n > self._flash.size:
            raise OSError(ENOSPC)
        r = self._f.write(buf)
        self._flash.used += r or 0
        return r

    def readinto(self, buf):
        return self._f.readinto(buf)

    def read(self, n=-1):
        return self._f.read(n)

    def readline(self):
        return self._f.readline()

    def seek(self, off, whence=0):
        return self._f.seek(off, whence)

    def tell(self):
        return self._f.tell()

    def flush(self):
        return self._f.flush()

    def close(self):
        return self._f.close()

    def ioctl(self, req, arg):
        if req == 1:
            self._f.flush()
            return 0
        if req == 4:
            self._f.close()
            return 0
        return -1

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self._f.close()

    def __iter__(self):
        return self

    def __next__(self):
        line = self._f.readline()
        if not line:
            raise StopIteration
        return line


class _Machine:
    """`machine` for the simulated board: reset() asks the host for a hard reset."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def reset(self):
        _send(M_RESET)
        while True:
            time.sleep(1)

    def soft_reset(self):
        raise SystemExit

    def unique_id(self):
        return bytes(int(_UID[i:i + 2], 16) for i in range(0, len(_UID), 2))

    def freq(self, *args):
        return 240000000

    def idle(self):
        time.sleep_ms(1)

    def reset_cause(self):
        return 1  # PWRON_RESET

    PWRON_RESET = 1

    def RTC(self):
        return _RTC()


class _RTC:
    # The host's clock; setting it only shifts what datetime() reads back (time.time() is the host's).
    offset = 0

    def datetime(self, dt=None):
        if dt is None:
            t = time.localtime(time.time() + _RTC.offset)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        y, mo, d, _, h, mi, sec = dt[:7]
        _RTC.offset = time.mktime((y, mo, d, h, mi, sec, 0, 0)) - time.time()


class _Micropython:
    """`micropython` whose kbd_intr() also tells the host whether Ctrl-C is an interrupt."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def kbd_intr(self, c):
        _send(M_KBD, 0, bytes([c & 0xFF]))
        if c == 3:
            _intr_on()
        else:
            _intr_off()


def _boot():
    flash = _Flash(_ROOT, _QUOTA)
    vfs.umount("/")
    vfs.mount(flash, "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    sys.argv[:] = []
    import machine

    sys.modules["machine"] = _Machine(machine)
    sys.modules["micropython"] = _Micropython(micropython)


def _read(n):
    buf = bytearray(n)
    mv = memoryview(buf)
    got = 0
    while got < n:
        r = _cin.readinto(mv[got:])
        if not r:
            raise SystemExit  # the host went away: this boot is over
        got += r
    return buf


def _format(exc):
    s = io.StringIO()
    sys.print_exception(exc, s)
    # Drop this runtime's own frames: the board shows only the user's code.
    lines = [ln for ln in s.getvalue().split("\n") if not ln.startswith('  File "simboard"')]
    return "\n".join(lines).encode()


class _State:
    kind = 0
    seq = 0
    payload = None
    result = None  # None while the job has not finished, else (status, text)
    sent = False


def _run(st, g):
    # The only place where SIGINT raises: between _intr_on() and the result being stored.
    _send(M_STARTED, st.seq)
    try:
        _intr_on()
        if st.kind == J_FILE:
            name = st.payload.decode()
            try:
                os.stat(name)
                exists = True
            except OSError:
                exists = False
            if exists:
                execfile(name, g)
        else:
            mode = "single" if st.kind == J_SINGLE else "exec"
            exec(compile(st.payload, "<stdin>", mode), g)
        st.result = (ST_OK, b"")
    except SystemExit:
        st.result = (ST_EXIT, b"")
    except BaseException as e:
        st.result = (ST_EXC, e)


def _loop(st, g):
    while True:
        if st.payload is None:
            hdr = _read(9)
            st.kind = hdr[0]
            st.seq, n = struct.unpack("<II", hdr[1:])
            st.payload = bytes(_read(n))
            st.result = None
            st.sent = False
        if st.result is None:
            _run(st, g)
        _intr_off()
        if not st.sent:
            status, text = st.result
            if not isinstance(text, bytes):
                text = _format(text)
            _send(M_DONE, st.seq, bytes([status]) + text)
            st.sent = True
        st.payload = None


def main():
    _boot()
    g = {"__name__": "__main__"}
    st = _State()
    while True:
        try:
            _loop(st, g)
        except KeyboardInterrupt as e:
            # A Ctrl-C that landed just as the code finished: report it as the code's result
            # (at most one can be pending once SIGINT is ignored again).
            _intr_off()
            if st.payload is not None and st.result is None:
                st.result = (ST_EXC, e)
        except SystemExit:
            return


main()
