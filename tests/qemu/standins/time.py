# `time` for MicroPython's qemu port, which has none (no RTC, no tick counter). Loaded from the test's RAM
# disk, never frozen: the harness sets the wall clock from the host's (set(t)) before the code under test
# runs; ticks count the milliseconds the code slept.
_now = [0]
_ticks = [0]


def set(t):
    _now[0] = t


def time():
    return _now[0]


def gmtime(t=None):
    # all the device package asks of it: the epoch's year (iothub.clock tells 1970 ports from 2000 ones)
    if t not in (None, 0):
        raise NotImplementedError("gmtime() of anything but the epoch on the qemu port")
    return (1970, 1, 1, 0, 0, 0, 3, 1)


def ticks_ms():
    return _ticks[0]


def ticks_diff(a, b):
    return a - b


def ticks_add(a, b):
    return a + b


def sleep_ms(ms):
    _ticks[0] += ms


def sleep(s):
    sleep_ms(int(s * 1000))
