# Board module for the Raspberry Pi Pico W (RP2040 + CYW43439): Wi-Fi station, NTP, the LED
# on the radio chip, watchdog, the RP2040's temperature sensor. Secrets live in /secrets.json.
# Hardware modules (network, ntptime, machine) are imported on first use through _hw(), so
# the tests run this file on the unix port with stand-ins that model their failures.
# The join/retry/NTP logic is shared with the other boards (iothub.station); this file keeps
# what is this board's own: its radio's status codes, LED, watchdog and sensor.

from iothub import station

NAME = "rp2_pico_w"
# MicroPython's bare-metal mbed TLS config allocates on the Python heap: hold room for a TLS session's
# record buffers (16 KB of content + overhead, and the 4 KB output buffer) from boot (iothub.transport).
TLS_ROOM = (16384 + 1024, 6144)
BACKOFF_MS = 1000  # first pause between attempts; doubles, capped at 8 s
HW_WDT_MAX_MS = 8000  # the RP2040 watchdog cannot count longer than ~8.3 s
_POLL_MS = 100
_LINK_NOIP = 2  # CYW43_LINK_NOIP: joined, no DHCP lease yet (no network.STAT_ name for it)


NetworkError = station.NetworkError
TimeError = station.TimeError


def _hw(name):
    return __import__(name)


def flash_root():
    return "/"


def _state(network, wlan, expired):
    """station.JOINED once connected with an address, a reason it failed, or None: still joining."""
    st = wlan.status()
    if st == getattr(network, "STAT_GOT_IP", 3) and wlan.isconnected():
        return station.JOINED
    if st == getattr(network, "STAT_NO_AP_FOUND", -2):
        return "ap-not-found"
    if st == getattr(network, "STAT_WRONG_PASSWORD", -3):
        return "wrong-password"
    if st == getattr(network, "STAT_CONNECT_FAIL", -1):
        return "timeout"  # the driver gave up without saying why
    if expired:
        return "dhcp-timeout" if st == _LINK_NOIP else "timeout"
    return None


def connect_network(ssid, password, timeout_s=20, retries=3):
    """Join `ssid`; idempotent. Raises NetworkError with the last failure's reason."""
    station.connect(_hw("network"), _state, ssid, password, timeout_s, retries, BACKOFF_MS, _POLL_MS)


def network_ok():
    return station.connected(_hw("network"))


def set_time(servers=("pool.ntp.org",), retries=3):
    """Set the RTC from the first NTP server that answers; raises TimeError."""
    station.set_time(_hw("ntptime"), servers, retries, BACKOFF_MS)


_led = []


def led(on):
    if not _led:
        machine = _hw("machine")
        _led.append(machine.Pin("LED", machine.Pin.OUT))  # wired to the CYW43, not a GPIO
    _led[0].value(1 if on else 0)


def watchdog(timeout_ms):
    return station.watchdog(_hw("machine"), timeout_ms, HW_WDT_MAX_MS)


def read_sensor():
    return station.rp2040_temperature(_hw("machine"))


def reset():
    _hw("machine").reset()
