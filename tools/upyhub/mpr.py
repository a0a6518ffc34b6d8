"""A board on a serial port, driven by the real mpremote (a subprocess per session).

Provisioning and audits talk to boards only through this: every call is one mpremote
connection with a deadline (mpremote itself waits forever on a port that stays silent), and
results come back as one tagged JSON line printed by code run on the board.
"""
import json
import os
import subprocess
import sys

from upyhub.errors import UpyhubError

# Board-side helpers, shared with the audit: _h(path) is a file's SHA-256 in hex; _walk(folder, out) appends every
# path below the folder to out, folders ending in /.
WALK = r"""
import os, hashlib, binascii
def _h(p):
    d = hashlib.sha256()
    with open(p, 'rb') as f:
        while True:
            b = f.read(512)
            if not b:
                break
            d.update(b)
    return binascii.hexlify(d.digest()).decode()
def _walk(p, out):
    for e in os.ilistdir(p):
        q = p + e[0] if p.endswith('/') else p + '/' + e[0]
        if e[1] == 0x4000:
            out.append(q + '/')
            _walk(q, out)
        else:
            out.append(q)
"""

# Board-side: hold the free heap to %d bytes in one piece, as a board of that size has it (the unix port's
# -X heapsize): everything beyond is taken by ballast, the largest pieces first, kept in `_ballast`
# (HEAP_FREE gives it back). In boot.py it holds for main.py too: both run in one set of globals.
HEAP_CAP = """
import gc
gc.collect()
_room = bytearray(%d - 32)  # the heap the code will have, in one piece (32: the object itself, rounding)
_ballast, _n = [], gc.mem_free()
while _n >= 64:  # then everything else: the largest pieces that fit first
    try:
        _ballast.append(bytearray(_n - 32))
        _n = gc.mem_free()
    except MemoryError:
        _n //= 2
_room = None
gc.collect()
"""
HEAP_FREE = "_ballast = None\nimport gc\ngc.collect()"

# Board-side: is the device package frozen into the firmware? Its modules then have no file (__file__ is
# relative). Only frozen code runs to find out: sys.path holds nothing but the frozen modules meanwhile.
FROZEN = r"""
def _frozen():
    import sys
    m = sys.modules.get('iothub')
    if m is None:
        p = sys.path[:]
        sys.path[:] = ['.frozen']
        try:
            import iothub as m
        except ImportError:
            m = None
        sys.path[:] = p
    return m is not None and not getattr(m, '__file__', '/').startswith('/')
"""

# Run on the board: the whole filesystem with [SHA-256, size] of each file (folders end in /), free space, what the
# secrets file holds as key names plus the SHA-256 of the device key and the Wi-Fi password (they stay there),
# what the board is (sys.platform, sys.implementation's name and machine) and whether its firmware has the device
# package frozen in (only frozen code runs to find out).
SNAPSHOT = WALK + FROZEN + r"""
import json
_all = []
_walk('/', _all)
_files = {}
for _p in _all:
    _files[_p] = '' if _p.endswith('/') else [_h(_p), os.stat(_p)[6]]
_snap = {'files': _files}
try:
    _s = os.statvfs('/')
    _snap['free'] = _s[0] * _s[3]
except Exception:
    _snap['free'] = None
try:
    with open('/secrets.json') as f:
        _sec = json.load(f)
    _snap['secret_names'] = sorted(_sec)
    for _n in ('device_key', 'wifi_password'):
        _k = _sec.get(_n)
        _k = hashlib.sha256(_k.encode()).digest() if isinstance(_k, str) else None
        _snap[_n + '_sha'] = binascii.hexlify(_k).decode() if _k else None
    _snap['key_sha'] = _snap.pop('device_key_sha')
except Exception:
    _snap['secret_names'] = None
try:
    with open('/config.json') as f:
        _snap['config'] = json.load(f)
except Exception:
    _snap['config'] = None
import sys
_snap['frozen'] = _frozen()
_snap['platform'] = sys.platform
_snap['implementation'] = [sys.implementation.name, getattr(sys.implementation, '_machine', '')]
print('UPYHUB-SNAP ' + json.dumps(_snap))
"""


class BoardError(UpyhubError):
    """The board answered, but the code run on it failed (message: its last error line)."""


class Board:
    def __init__(self, port, timeout=120):
        self.port = port
        self.timeout = timeout

    def mpremote(self, *args, timeout=None):
        cmd = [sys.executable, "-m", "mpremote", "connect", self.port] + list(args)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.timeout,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        except subprocess.TimeoutExpired:
            raise BoardError("the board on %s did not answer within %d s" % (self.port, timeout or self.timeout))
        if "failed to access" in proc.stderr or "no device found" in proc.stderr:
            raise BoardError("cannot open %s: no board there, or another program holds it" % self.port)
        if "could not enter raw repl" in (proc.stdout + proc.stderr):
            raise BoardError("the board on %s does not answer MicroPython's raw REPL" % self.port)
        return proc

    def run(self, *args, timeout=None):
        """mpremote commands that must succeed; returns stdout."""
        proc = self.mpremote(*args, timeout=timeout)
        if proc.returncode != 0:
            raise BoardError("on %s: %s" % (self.port, _last_line(proc)))
        return proc.stdout

    def tagged(self, code, tag, timeout=None):
        """Run code that prints `TAG json`; returns the decoded JSON."""
        out = self.run("exec", code, timeout=timeout)
        for line in out.splitlines():
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
        raise BoardError("on %s: the board printed no %s line" % (self.port, tag))

    def snapshot(self):
        return self.tagged(SNAPSHOT, "UPYHUB-SNAP")


def _last_line(proc):
    lines = (proc.stdout.strip() + "\n" + proc.stderr.strip()).strip().splitlines()
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:300]
    return "mpremote failed (status %d)" % proc.returncode
