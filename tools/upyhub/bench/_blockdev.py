"""A block device in RAM, as MicroPython code (a string to run on the device): littlefs or FAT on it
behave as on a board's flash, and it counts what the filesystem asks of it (block writes, the bytes they
carry, block erases). Used by the outbox benchmark and by tests/qemu's RAM disk."""

RAM_FLASH = """
class RAMFlash:
    def __init__(self, blocks, bs):
        self.bs, self.n = bs, blocks
        self.mem = memoryview(bytearray(blocks * bs))
        self.writes = self.written = self.erases = 0
    def readblocks(self, num, buf, off=0):
        a = num * self.bs + off
        buf[:] = self.mem[a:a + len(buf)]
    def writeblocks(self, num, buf, off=None):
        a = num * self.bs + (off or 0)
        self.mem[a:a + len(buf)] = buf
        self.writes += 1
        self.written += len(buf)
    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.bs
        if op == 6:
            self.erases += 1
            return 0
"""
