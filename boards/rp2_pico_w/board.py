# Board module for the Raspberry Pi Pico W (RP2040 + CYW43439): Wi-Fi station, NTP, the LED
# on the radio chip, watchdog, the RP2040's temperature sensor. Secrets live in /secrets.json.
# Hardware modules (network, ntptime, machine) are imported on first use through _hw(), so
# the tests run this file on the unix port with stand-ins that model their failures.
import time

NAME = "rp2_pico_w"
BACKOFF_MS = 1000  # first pause between attempts; doubles, capped at 8 s
HW_WDT_MAX_MS = 8000  # the RP2040 watchdog cannot count longer than ~8.3 s
_POLL_MS = 100
_LINK_NOIP = 2  # CYW43_LINK_NOIP: joined, no DHCP lease yet (no network.STAT_ name for it)


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


def _wait(network, wlan, timeout_ms):
    """None once connected with an address, else the reason it did not."""
    no_ap = getattr(network, "STAT_NO_AP_FOUND", -2)
    bad_auth = getattr(network, "STAT_WRONG_PASSWORD", -3)
    failed = getattr(network, "STAT_CONNECT_FAIL", -1)
    got_ip = getattr(network, "STAT_GOT_IP", 3)
    start = time.ticks_ms()
    last = None
    while True:
        st = wlan.status()
        if st == got_ip and wlan.isconnected():
            return None
        if st == no_ap:
            return "ap-not-found"
        if st == bad_auth:
            return "wrong-password"
        if st == failed:
            return "timeout"  # the driver gave up without saying why
        last = st
        if time.ticks_diff(time.ticks_ms(), start) >= timeout_ms:
            return "dhcp-timeout" if last == _LINK_NOIP else "timeout"
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
            reason = "timeout"
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
                pass
    raise TimeError("no answer from %s" % ", ".join(servers))


_led = []


def led(on):
    if not _led:
        machine = _hw("machine")
        _led.append(machine.Pin("LED", machine.Pin.OUT))  # wired to the CYW43, not a GPIO
    _led[0].value(1 if on else 0)


class _Watchdog:
    """A watchdog longer than the hardware's 8.3 s: a timer keeps feeding the hardware one
    only while the application has fed this one within `timeout_ms`."""

    def __init__(self, machine, timeout_ms):
        self._timeout = timeout_ms
        self._last = time.ticks_ms()
        self._wdt = machine.WDT(timeout=min(timeout_ms, HW_WDT_MAX_MS))
        self._timer = machine.Timer(period=min(timeout_ms, HW_WDT_MAX_MS) // 4, callback=self._tick)

    def _tick(self, _timer):
        if time.ticks_diff(time.ticks_ms(), self._last) < self._timeout:
            self._wdt.feed()

    def feed(self):
        self._last = time.ticks_ms()
        self._wdt.feed()


def watchdog(timeout_ms):
    machine = _hw("machine")
    if timeout_ms <= HW_WDT_MAX_MS:
        return machine.WDT(timeout=timeout_ms)
    return _Watchdog(machine, timeout_ms)


def read_sensor():
    # ADC channel 4 is the RP2040's internal sensor: 0.706 V at 27 C, -1.721 mV per degree.
    adc = _hw("machine").ADC(4)
    volts = adc.read_u16() * 3.3 / 65535
    return 27 - (volts - 0.706) / 0.001721


def reset():
    _hw("machine").reset()
