# Board module for the unix port: the firmware runs unchanged on a PC, with the flash as a folder.
# Stand-ins for hardware model its failures: files in <flash>/.sim/ switch them on
#   wifi-down     the radio has no access point (network_ok() false, connect_network raises)
#   clock-unset   NTP cannot be reached (set_time raises)
import os

NAME = "unix"


def _tls_room():
    # The memory model of the port this runs on: build/micropython-32 puts mbed TLS on the Python heap
    # (as rp2 does) unless MP32_MBEDTLS_ALLOC=libc (as ESP32 does); the 64-bit port uses libc.
    import sys

    if sys.maxsize < 2**32 and os.getenv("MP32_MBEDTLS_ALLOC") != "libc":
        return (16384 + 1024, 6144)
    return None


TLS_ROOM = _tls_room()  # see boards/rp2_pico_w/board.py


class NetworkError(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class TimeError(Exception):
    pass


def flash_root():
    return os.getenv("UPYHUB_FLASH") or os.getcwd()


def _sim(flag):
    try:
        os.stat(flash_root() + "/.sim/" + flag)
        return True
    except OSError:
        return False


def network_ok():
    return not _sim("wifi-down")


def connect_network(ssid, password, timeout_s=20, retries=3):
    if not network_ok():
        raise NetworkError("ap-not-found")


def set_time(servers=("pool.ntp.org",), retries=3):
    # The host keeps its own clock; only the simulated NTP outage can fail.
    if _sim("clock-unset"):
        raise TimeError("no answer from %s" % ", ".join(servers))


def led(on):
    pass


class _Dog:
    def feed(self):
        pass


def watchdog(timeout_ms):
    return _Dog()


# A room slowly warming and cooling: a bounded random walk around 21 C.
_t = [21.0]


def read_sensor():
    r = (int.from_bytes(os.urandom(2), "big") / 65535.0 - 0.5) * 0.2
    t = _t[0] + r + (21.0 - _t[0]) * 0.02
    _t[0] = t
    return t


def reset():
    print("board: reset")
    raise SystemExit(0)
