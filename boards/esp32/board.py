# Board module for ESP32 boards (ESP32, -S2, -S3, -C3): Wi-Fi station, NTP, status LED,
# watchdog, internal temperature. Secrets live in /secrets.json on the flash (littlefs).
# Hardware modules (network, ntptime, machine, esp32) are imported on first use through _hw(),
# so the tests run this file on the unix port with stand-ins that model their failures.
import time

NAME = "esp32"
LED_PIN = 2  # the on-board LED of most ESP32 DevKits; set to None for boards without one
BACKOFF_MS = 1000  # first pause between attempts; doubles, capped at 8 s
_POLL_MS = 100


class NetworkError(Exception):
    # reason: "ap-not-found", "wrong-password", "dhcp-timeout", "timeout" or "no-interface"
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class TimeError(Exception):
    pass


def _hw(name):
    return __import__(name)


def flash_root():
    return "/"


def _pause(attempt):
    time.sleep_ms(min(BACKOFF_MS << attempt, 8000))


def _wlan():
    network = _hw("network")
    try:
        wlan = network.WLAN(network.STA_IF)
        if not wlan.active():
            wlan.active(True)
    except (AttributeError, OSError):
        raise NetworkError("no-interface")
    return network, wlan


def _associated(wlan):
    # ESP32 reports STAT_CONNECTING both while joining and while waiting for DHCP;
    # the RSSI is only readable once associated with the access point.
    try:
        wlan.status("rssi")
        return True
    except Exception:
        return False


def _wait(network, wlan, timeout_ms):
    """None once connected with an address, else the reason it did not."""
    no_ap = (getattr(network, "STAT_NO_AP_FOUND", 201),
             getattr(network, "STAT_NO_AP_FOUND_IN_RSSI_THRESHOLD", 211),
             getattr(network, "STAT_NO_AP_FOUND_IN_AUTHMODE_THRESHOLD", 212),
             getattr(network, "STAT_NO_AP_FOUND_W_COMPATIBLE_SECURITY", 210),
             getattr(network, "STAT_BEACON_TIMEOUT", 200))
    bad_auth = (getattr(network, "STAT_WRONG_PASSWORD", 202), getattr(network, "STAT_HANDSHAKE_TIMEOUT", 204))
    start = time.ticks_ms()
    while True:
        if wlan.isconnected():
            return None
        st = wlan.status()
        if st in no_ap:
            return "ap-not-found"
        if st in bad_auth:
            return "wrong-password"
        if time.ticks_diff(time.ticks_ms(), start) >= timeout_ms:
            return "dhcp-timeout" if _associated(wlan) else "timeout"
        time.sleep_ms(_POLL_MS)


def connect_network(ssid, password, timeout_s=20, retries=3):
    """Join `ssid`; idempotent. Raises NetworkError with the last failure's reason."""
    network, wlan = _wlan()
    if wlan.isconnected():
        return
    reason = "timeout"
    for attempt in range(max(retries, 1)):
        if attempt:
            _pause(attempt - 1)
        try:
            wlan.connect(ssid, password)
        except OSError:
            reason = "timeout"  # the driver refused (e.g. still busy): try again
        else:
            reason = _wait(network, wlan, int(timeout_s * 1000))
            if reason is None:
                return
        try:
            wlan.disconnect()  # stop the driver's own reconnect loop before the next try
        except OSError:
            pass
    raise NetworkError(reason)


def network_ok():
    try:
        network = _hw("network")
        return network.WLAN(network.STA_IF).isconnected()
    except (AttributeError, OSError):
        return False


def set_time(servers=("pool.ntp.org",), retries=3):
    """Set the RTC from the first NTP server that answers; raises TimeError."""
    ntptime = _hw("ntptime")
    if isinstance(servers, str):
        servers = (servers,)
    for attempt in range(max(retries, 1)):
        if attempt:
            _pause(attempt - 1)
        for host in servers:
            ntptime.host = host
            try:
                ntptime.settime()
                return
            except (OSError, OverflowError, IndexError, ValueError):
                pass  # unreachable, timed out or a short reply: next server
    raise TimeError("no answer from %s" % ", ".join(servers))


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
