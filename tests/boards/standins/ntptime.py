# Stand-in for micropython-lib's `ntptime` (NTP over Wi-Fi), for tests on the unix port.
# Each settime() takes the next outcome from SCENARIO (DEFAULT when empty):
#   "ok"           the server answers; the clock counts as set (the host's clock is not touched)
#   "unreachable"  no answer within `timeout` (OSError ETIMEDOUT, as a socket timeout gives)
#   "short"        a truncated reply (what struct.unpack makes of it)
host = "pool.ntp.org"
timeout = 1
SCENARIO = []
DEFAULT = "ok"
LOG = []  # the host asked, per call
SET = []  # hosts that set the clock


def settime():
    outcome = SCENARIO.pop(0) if SCENARIO else DEFAULT
    LOG.append(host)
    if outcome == "unreachable":
        raise OSError(110)
    if outcome == "short":
        raise ValueError("buffer too small")
    SET.append(host)
