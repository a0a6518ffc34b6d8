# Stand-in for a board's `machine` module, for tests on the unix port: pins, the watchdog
# (with the hardware's longest timeout when WDT_MAX_MS is set), timers fired by the test,
# the ADC (values from ADC_U16) and reset().
PINS = {}
WDTS = []
TIMERS = []
ADC_U16 = {}
RESETS = []
WDT_MAX_MS = None


class Pin:
    OUT = 1
    IN = 0

    def __init__(self, pin_id, mode=-1):
        self.id = pin_id
        PINS[pin_id] = None

    def value(self, v=None):
        if v is None:
            return PINS[self.id]
        PINS[self.id] = v


class WDT:
    def __init__(self, id=0, timeout=5000):
        if WDT_MAX_MS is not None and timeout > WDT_MAX_MS:
            raise ValueError("timeout too long")
        self.timeout = timeout
        self.feeds = 0
        WDTS.append(self)

    def feed(self):
        self.feeds += 1


class Timer:
    def __init__(self, id=-1, period=1000, callback=None, mode=1):
        self.period = period
        self.callback = callback
        TIMERS.append(self)

    def fire(self):
        self.callback(self)

    def deinit(self):
        pass


class ADC:
    def __init__(self, channel):
        self.channel = channel

    def read_u16(self):
        return ADC_U16[self.channel]


def reset():
    RESETS.append(1)
    raise SystemExit("machine.reset")


def unique_id():
    return b"\x01\x02\x03\x04\x05\x06"
