# Stand-in for a board's `machine` module, for tests on the unix port: pins, the watchdog
# (with the hardware's longest timeout when WDT_MAX_MS is set), timers fired by the test,
# the ADC (values from ADC_U16), reset(), the UART (rp2's: ids 0 and 1, its flow-control constants; UARTS
# records each one's arguments) and the RTC (RTC_SET records the datetime() tuples set).
PINS = {}
WDTS = []
TIMERS = []
ADC_U16 = {}
RESETS = []
WDT_MAX_MS = None
UARTS = []
UART_BROKEN = False  # True: UART() raises, as the port does for a UART it lacks
RTC_SET = []


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


class UART:
    CTS = 1  # ports/rp2/machine_uart.c: UART_HWCONTROL_CTS, _RTS
    RTS = 2

    def __init__(self, id, baudrate=115200, bits=8, parity=None, stop=1, *, txbuf=256, rxbuf=256, flow=0):
        if UART_BROKEN or id not in (0, 1):
            raise ValueError("UART(%d) doesn't exist" % id)
        if flow & ~(UART.CTS | UART.RTS):
            raise ValueError("bad hardware flow control mask")
        self.args = {"id": id, "baudrate": baudrate, "rxbuf": rxbuf, "txbuf": txbuf, "flow": flow}
        UARTS.append(self.args)

    # A stream (network.PPP requires one); nothing arrives on it.
    def read(self, n=-1):
        return None

    def readinto(self, buf, n=-1):
        return None

    def write(self, buf):
        return len(buf)

    def any(self):
        return 0

    def irq(self, handler=None, trigger=0, hard=False):
        pass


class RTC:
    def datetime(self, dt=None):
        if dt is None:
            return tuple(RTC_SET[-1]) if RTC_SET else (2000, 1, 1, 5, 0, 0, 0, 0)
        if len(dt) != 8:
            raise ValueError("requested length 8 but object has length %d" % len(dt))
        RTC_SET.append(list(dt))
