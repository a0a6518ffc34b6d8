# Board module for ESP32 boards (ESP32, -S2, -S3, -C3): Wi-Fi station, NTP, status LED,
# watchdog, internal temperature. Secrets live in /secrets.json on the flash (littlefs).
# Hardware modules (network, ntptime, machine, esp32) are imported on first use through _hw(),
# so the tests run this file on the unix port with stand-ins that model their failures.
# The join/retry/NTP logic is shared with the other boards (iothub.station); this file keeps
# what is this board's own: its radio's status codes, LED, watchdog and sensor.
from iothub import station

NAME = "esp32"
TLS_ROOM = None  # ESP-IDF's mbed TLS allocates outside the Python heap: nothing to hold
LED_PIN = 2  # the on-board LED of most ESP32 DevKits; set to None for boards without one
BACKOFF_MS = 1000  # first pause between attempts; doubles, capped at 8 s
_POLL_MS = 100


NetworkError = station.NetworkError
TimeError = station.TimeError


def _hw(name):
    return __import__(name)


def flash_root():
    return "/"


def _associated(wlan):
    # ESP32 reports STAT_CONNECTING both while joining and while waiting for DHCP;
    # the RSSI is only readable once associated with the access point.
    try:
        wlan.status("rssi")
        return True
    except Exception:
        return False


def _state(network, wlan, expired):
    """station.JOINED once connected with an address, a reason it failed, or None: still joining."""
    if wlan.isconnected():
        return station.JOINED
    st = wlan.status()
    if st in (getattr(network, "STAT_NO_AP_FOUND", 201),
              getattr(network, "STAT_NO_AP_FOUND_IN_RSSI_THRESHOLD", 211),
              getattr(network, "STAT_NO_AP_FOUND_IN_AUTHMODE_THRESHOLD", 212),
              getattr(network, "STAT_NO_AP_FOUND_W_COMPATIBLE_SECURITY", 210),
              getattr(network, "STAT_BEACON_TIMEOUT", 200)):
        return "ap-not-found"
    if st in (getattr(network, "STAT_WRONG_PASSWORD", 202), getattr(network, "STAT_HANDSHAKE_TIMEOUT", 204)):
        return "wrong-password"
    if expired:
        return "dhcp-timeout" if _associated(wlan) else "timeout"
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
    if LED_PIN is None:
        return
    if not _led:
        machine = _hw("machine")
        _led.append(machine.Pin(LED_PIN, machine.Pin.OUT))
    _led[0].value(1 if on else 0)


def watchdog(timeout_ms):
    # The ESP32's task watchdog takes long timeouts directly; once started it cannot stop.
    return _hw("machine").WDT(timeout=timeout_ms)


def read_sensor():
    esp32 = _hw("esp32")
    if hasattr(esp32, "mcu_temperature"):  # S2/S3/C3/C6: degrees Celsius
        return float(esp32.mcu_temperature())
    return (esp32.raw_temperature() - 32) / 1.8  # the original ESP32: Fahrenheit


def reset():
    _hw("machine").reset()
