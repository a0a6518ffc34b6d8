# Board module for a Raspberry Pi Pico (RP2040) whose network is a PPP link on UART0 to a serial or cellular
# modem that is already in data mode (boards/rp2_pico_ppp: tools/setup/rp2.sh builds its firmware; the
# emulated Pico of tests/rp2 runs it against slirp). The same interface as the Wi-Fi boards, so main.py and
# the session need nothing of their own; NEEDS_SSID = False tells main.py to bring the link up without
# Wi-Fi settings. Failure model (each a tested path, tests/boards and tests/rp2):
#   peer gone     the peer stops answering: LCP echoes every 10 s (mpconfigboard.h), three missed and lwIP
#                 ends the link (PPPERR_PEERDEAD); network_ok() turns false, the session reconnects through
#                 connect_network(), which dials again
#   link down     the peer ends the link (LCP terminate, PPPERR_CONNECT): the same
#   modem reset   a modem that resets answers a fresh negotiation: a dial after a dead link starts from a
#                 new PPP state; one still being negotiated goes on until lwIP gives it up
#   no answer     nothing answers a dial within timeout_s: NetworkError("timeout"), retried with backoff;
#                 refused PAP credentials are NetworkError("auth-failed")
# UART0 (GP0 TX, GP1 RX) with RTS/CTS flow control (GP3, GP2): a flash erase stops the CPU, interrupts off,
# for ~45 ms, far longer than the 32-byte receive FIFO lasts at 115200 baud (2.8 ms); with flow control the
# modem waits instead of losing bytes. The clock comes from SNTP over the link (this firmware has no
# micropython-lib ntptime): set_time(["10.0.2.2"]) or "host:port" entries. Hardware modules are imported on
# first use through _hw(), so the tests run this file on the unix port with stand-ins.
import time

from iothub import station

NAME = "rp2_pico_ppp"
NEEDS_SSID = False
# MicroPython's bare-metal mbed TLS config allocates on the Python heap: hold room for a TLS session's
# record buffers from boot (iothub.transport), as on the Pico W.
TLS_ROOM = (16384 + 1024, 6144)
UART_ID = 0
BAUDRATE = 115200
RXBUF = 1024  # bytes the UART driver holds between PPP polls (with RTS/CTS the modem waits when it is full)
# Bytes of PPP frames the UART driver holds while they go out: more than lwIP can have in flight
# (mpconfigboard.h: 2 x 536-byte segments, twice with a retransmission, framing and escapes), so a write never
# waits. A waiting write runs MicroPython's pending callbacks, PPP's input among them, inside lwIP's output:
# the board hangs in tcp_output (MicroPython 1.25's network.PPP; found on the emulated Pico).
TXBUF = 4096
BACKOFF_MS = 1000  # first pause between attempts; doubles, capped at 8 s
HW_WDT_MAX_MS = 8000
NTP_DELTA = 2208988800  # seconds from 1900 (NTP's epoch) to 1970 (the board's)
_POLL_MS = 20
# lwIP's PPP error codes (status() is minus one of them) in words
_REASONS = {6: "link-down", 7: "auth-failed", 8: "protocol-error", 9: "peer-gone"}

NetworkError = station.NetworkError
TimeError = station.TimeError
_ppp = []  # the network.PPP object, made on first use


def _hw(name):
    return __import__(name)


def flash_root():
    return "/"


def _link():
    if not _ppp:
        network, machine = _hw("network"), _hw("machine")
        try:
            uart = machine.UART(UART_ID, baudrate=BAUDRATE, rxbuf=RXBUF, txbuf=TXBUF,
                                flow=machine.UART.RTS | machine.UART.CTS)
            _ppp.append(network.PPP(uart))
        except (AttributeError, TypeError, ValueError, OSError):
            raise NetworkError("no-interface")
    return _ppp[0]


_CONNECTING = 3  # network.PPP.status() while a link is being negotiated


def _forget(ppp):
    # Free a dead link's PPP state (an error, or a link never started), so the next dial starts afresh, as after
    # a modem's reset. Never a link being negotiated: MicroPython 1.25's network.PPP leaks lwIP's only PPP
    # control block when one is closed or freed mid-negotiation (its close callback sets the state inactive
    # while lwIP still holds the block), and every later connect() then fails with "pppos_create failed" until
    # the board resets (found on the emulated Pico: a dial while the modem was away).
    try:
        if ppp.status() not in (0, _CONNECTING):
            ppp.__del__()
    except (AttributeError, OSError):
        pass


def _dial(network, ppp, user, key):
    """None once a negotiation is under way, else the reason none could start."""
    try:
        if user:
            ppp.connect(security=network.PPP.SEC_PAP, user=user, key=key or "")
        else:
            ppp.connect()
    except OSError:
        return "timeout"  # the stack refused to start one: try again
    return None


def _wait(ppp, timeout_ms):
    """None once the link is up, else the reason it is not (a negotiation still under way is "timeout")."""
    start = time.ticks_ms()
    while not ppp.isconnected():
        st = ppp.status()
        if st < 0:
            return _REASONS.get(-st, "link-down")
        if time.ticks_diff(time.ticks_ms(), start) >= timeout_ms:
            return "timeout"
        time.sleep_ms(_POLL_MS)
    return None


def connect_network(ssid=None, password=None, timeout_s=20, retries=3):
    """Bring the PPP link up; idempotent. ssid and password are the PAP user and password when the peer
    asks for them (a cellular APN's), else None. A negotiation still under way (a peer that does not answer
    yet) is waited for, never torn down: lwIP gives it up by itself (10 configure requests, 3 s apart), and the
    dial after that starts afresh. Raises NetworkError with the last failure's reason."""
    network = _hw("network")
    ppp = _link()
    if ppp.isconnected():
        return
    reason = "timeout"
    for attempt in range(max(retries, 1)):
        if attempt:
            station.pause(attempt - 1, BACKOFF_MS)
        if ppp.status() != _CONNECTING:
            _forget(ppp)
            reason = _dial(network, ppp, ssid, password)
            if reason is not None:
                continue
        reason = _wait(ppp, int(timeout_s * 1000))
        if reason is None:
            return
    raise NetworkError(reason)


def network_ok():
    return bool(_ppp) and _ppp[0].isconnected()


class _Sntp:
    """What station.set_time drives: .host, then settime(). One SNTP request (RFC 4330) over UDP."""

    host = "pool.ntp.org"
    timeout_s = 2

    def settime(self):
        import socket
        import struct

        host, _, port = self.host.partition(":")
        addr = socket.getaddrinfo(host, int(port or 123), 0, socket.SOCK_DGRAM)[0][-1]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.settimeout(self.timeout_s)
            request = bytearray(48)
            request[0] = 0x23  # version 4, client
            s.sendto(request, addr)
            reply = s.recv(48)
        finally:
            s.close()
        # A server's answer (mode 4), synchronised (stratum 1..15), with a transmit time: else not a time.
        if len(reply) < 48 or reply[0] & 7 != 4 or not 1 <= reply[1] <= 15 or reply[0] >> 6 == 3:
            raise ValueError("not an NTP server's answer")
        secs = struct.unpack("!I", reply[40:44])[0]
        if not secs:
            raise ValueError("no transmit time")
        if not secs & 0x80000000:
            secs += 0x100000000  # RFC 4330 section 3: top bit clear, the era from 2036-02-07 (not 1900)
        tm = time.gmtime(secs - NTP_DELTA)
        _hw("machine").RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))


def set_time(servers=("pool.ntp.org",), retries=3):
    """Set the RTC from the first SNTP server that answers; raises TimeError."""
    station.set_time(_Sntp(), servers, retries, BACKOFF_MS)


_led = []


def led(on):
    if not _led:
        machine = _hw("machine")
        _led.append(machine.Pin(25, machine.Pin.OUT))  # the Pico's LED, on GP25
    _led[0].value(1 if on else 0)


def watchdog(timeout_ms):
    return station.watchdog(_hw("machine"), timeout_ms, HW_WDT_MAX_MS)


def read_sensor():
    return station.rp2040_temperature(_hw("machine"))


def reset():
    _hw("machine").reset()
