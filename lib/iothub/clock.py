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


def civil_from_days(z):
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def iso(t):
    # Unix seconds -> "YYYY-MM-DDTHH:MM:SSZ" (what the twin reports).
    days, s = divmod(int(t), 86400)
    y, m, d = civil_from_days(days)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, s // 3600, s // 60 % 60, s % 60)
