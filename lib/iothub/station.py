# Network, clock and chip logic shared by the board modules (boards/esp32, boards/rp2_pico_w,
# boards/rp2_pico_ppp): Wi-Fi join, NTP, a watchdog longer than the hardware's, the RP2040's sensor.
# What differs per board, how its radio reports progress, comes in as a function; the hardware
# modules (network, ntptime, machine) come in as arguments, so tests can hand in stand-ins.
import time

JOINED = "joined"  # what a board's state function returns once it has an address


class NetworkError(Exception):
    # reason: "ap-not-found", "wrong-password", "dhcp-timeout", "timeout" or "no-interface"
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class TimeError(Exception):
    pass


def pause(attempt, backoff_ms):
    # Before retry `attempt` + 1: backoff_ms, doubling each time, capped at 8 s.
    time.sleep_ms(min(backoff_ms << attempt, 8000))


def _wlan(network):
    try:
        wlan = network.WLAN(network.STA_IF)
        if not wlan.active():
            wlan.active(True)
    except (AttributeError, OSError):
        raise NetworkError("no-interface")
    return wlan


def _wait(network, wlan, state, timeout_ms, poll_ms):
    """JOINED, or the reason it did not join. state(network, wlan, expired) judges the radio's
    status: None to keep waiting; once `expired` it must give JOINED or a reason."""
    start = time.ticks_ms()
    while True:
        expired = time.ticks_diff(time.ticks_ms(), start) >= timeout_ms
        verdict = state(network, wlan, expired)
        if verdict is not None:
            return verdict
        time.sleep_ms(poll_ms)


def connect(network, state, ssid, password, timeout_s, retries, backoff_ms, poll_ms):
    """Join `ssid`; idempotent. Raises NetworkError with the last failure's reason."""
    wlan = _wlan(network)
    if wlan.isconnected():
        return
    reason = "timeout"
    for attempt in range(max(retries, 1)):
        if attempt:
            pause(attempt - 1, backoff_ms)
        try:
            wlan.connect(ssid, password)
        except OSError:
            reason = "timeout"  # the driver refused (e.g. still busy): try again
        else:
            reason = _wait(network, wlan, state, int(timeout_s * 1000), poll_ms)
            if reason == JOINED:
                return
        try:
            wlan.disconnect()  # stop the driver's own reconnect loop before the next try
        except OSError:
            pass
    raise NetworkError(reason)


def connected(network):
    try:
        return network.WLAN(network.STA_IF).isconnected()
    except (AttributeError, OSError):
        return False


def set_time(ntptime, servers, retries, backoff_ms):
    """Set the RTC from the first NTP server that answers; raises TimeError."""
    if isinstance(servers, str):
        servers = (servers,)
    for attempt in range(max(retries, 1)):
        if attempt:
            pause(attempt - 1, backoff_ms)
        for host in servers:
            ntptime.host = host
            try:
                ntptime.settime()
                return
            except (OSError, OverflowError, IndexError, ValueError):
                pass  # unreachable, timed out or a short reply: next server
    raise TimeError("no answer from %s" % ", ".join(servers))


class Watchdog:
    """A watchdog longer than the hardware's (the RP2040's counts at most ~8.3 s): a timer keeps
    feeding the hardware one only while the application has fed this one within `timeout_ms`."""

    def __init__(self, machine, timeout_ms, hw_max_ms):
        self._timeout = timeout_ms
        self._last = time.ticks_ms()
        self._wdt = machine.WDT(timeout=min(timeout_ms, hw_max_ms))
        self._timer = machine.Timer(period=min(timeout_ms, hw_max_ms) // 4, callback=self._tick)

    def _tick(self, _timer):
        if time.ticks_diff(time.ticks_ms(), self._last) < self._timeout:
            self._wdt.feed()

    def feed(self):
        self._last = time.ticks_ms()
        self._wdt.feed()


def watchdog(machine, timeout_ms, hw_max_ms):
    if timeout_ms <= hw_max_ms:
        return machine.WDT(timeout=timeout_ms)
    return Watchdog(machine, timeout_ms, hw_max_ms)


def rp2040_temperature(machine):
    # ADC channel 4 is the RP2040's internal sensor: 0.706 V at 27 C, -1.721 mV per degree.
    volts = machine.ADC(4).read_u16() * 3.3 / 65535
    return 27 - (volts - 0.706) / 0.001721
