"""Device-side snippets for tests that need a board's filesystem or a power cut (MicroPython code).

IMAGE: a block device backed by a host file (what was written before a power cut stays written);
`mount(fs, path, mkfs)` mounts littlefs2 or FAT from it at /flash.
CRASH % k: `_cut(op, path)`, a flash-operation hook that ends the process at once (no flush, no
cleanup: a power cut) on its k-th call."""

IMAGE = """
import os
class Image:
    def __init__(self, path, bs=512):
        self.f = open(path, "r+b")
        self.bs = bs
        self.n = os.stat(path)[6] // bs
    def readblocks(self, num, buf, off=0):
        self.f.seek(num * self.bs + off)
        self.f.readinto(buf)
    def writeblocks(self, num, buf, off=None):
        self.f.seek(num * self.bs + (off or 0))
        self.f.write(buf)
        self.f.flush()
    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:
            return 0
def mount(fs, path, mkfs=False, readonly=False):
    VFS = getattr(os, fs)
    bd = Image(path)
    if mkfs:
        VFS.mkfs(bd)
    os.mount(VFS(bd), "/flash", readonly=readonly)
"""

CRASH = """
import ffi
_exit = ffi.open("libc.so.6").func("v", "_exit", "i")
_n = [0]
def _cut(op, path):
    _n[0] += 1
    if _n[0] == %d:
        _exit(9)
"""
