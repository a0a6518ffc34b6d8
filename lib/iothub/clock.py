# Wall clock as Unix seconds whatever the port's epoch (1970 or 2000), and the
# refusal to trust a clock that was obviously never set.
import time

# 2000-01-01 minus 1970-01-01 in seconds.
_EPOCH_2000 = 946684800
# The firmware cannot run before it was written: a clock earlier than this is unset.
# (Boards boot at the epoch, 1970 or 2000, until NTP or the host sets them.)
BUILD_TIME = 1795910400  # 2026-11-29T00:00:00Z


def epoch_offset(gmtime=time.gmtime):
    # Seconds to add to time.time() to get Unix time, detected at run time
    # (ESP32 up to ~1.22 counts from 2000, the unix port and newer boards from 1970).
    return _EPOCH_2000 if gmtime(0)[0] == 2000 else 0


def now():
    return int(time.time()) + epoch_offset()


def is_set(t=None):
    return (now() if t is None else t) >= BUILD_TIME


def require_set():
    t = now()
    if t < BUILD_TIME:
        raise ValueError("clock is not set (it reads before the firmware's build date): set it by NTP first")
    return t
