"""boards/rp2_pico_ppp on the unix port: the PPP link with tests/boards/standins/ in place of the UART and
network.PPP (a peer that never answers, refuses the credentials, ends the link, dies later), and its SNTP
client against real UDP servers on 127.0.0.1 (threads of this test) that answer well or badly. The
watchdog and sensor are tested with the Pico W's in test_board_modules.py (iothub.station)."""
import calendar
import datetime
import socket
import struct
import threading

import pytest

from boardrun import run_board

BOARD = "rp2_pico_ppp"

DIAL = """
network.SCENARIO[:] = %(scenario)r
err = None
try:
    board.connect_network(%(user)r, %(key)r, timeout_s=%(timeout)s, retries=%(retries)d)
except board.NetworkError as e:
    err = e.reason
print(json.dumps({"err": err, "ok": board.network_ok(), "log": network.LOG}))
"""


def dial(run_mp, scenario, user=None, key=None, retries=3, timeout=0.3, before="", then="", **kw):
    """`before`, connect_network() with the peer behaving as `scenario` says, then `then`; the JSON printed
    last."""
    body = DIAL % {"scenario": scenario, "user": user, "key": key, "retries": retries, "timeout": timeout}
    return run_board(run_mp, BOARD, before + body + then, **kw)


def connects(log):
    return [c[1:] for c in log if c[0] == "connect"]


def fresh_dials(log):
    """True when every connect() after the first comes right after a __del__() (a new PPP state)."""
    dials = [i for i, c in enumerate(log) if c[0] == "connect"]
    return all(log[i - 1] == ["del"] for i in dials[1:])


LEAKS = """
print(json.dumps({"err": err, "log": network.LOG, "leaked": network.LEAKED[0], "status": board._ppp[0].status()}))
"""


def test_connects_and_is_idempotent(run_mp):
    r = dial(run_mp, ["ok"], timeout=5, then="""
first = list(network.LOG)
board.connect_network(None, None)
print(json.dumps({"first": first, "ok": board.network_ok(), "log": network.LOG}))
""")
    assert r["first"] == [["PPP"], ["connect", 0, None, None]]
    assert r["log"] == r["first"] and r["ok"] is True  # already up: no new dial, the link left alone


@pytest.mark.parametrize("user, key, sent", [
    ("apn-user", "apn-pw", [1, "apn-user", "apn-pw"]),  # SEC_PAP with the credentials
    ("apn-user", None, [1, "apn-user", ""]),  # PAP with an empty password, not None (a TypeError)
    (None, None, [0, None, None]),  # SEC_NONE
])
def test_credentials_are_pap_else_none(run_mp, user, key, sent):
    r = dial(run_mp, ["ok"], user=user, key=key, timeout=5)
    assert r["err"] is None and connects(r["log"]) == [sent]


@pytest.mark.parametrize("failure, reason", [
    ("auth-failed", "auth-failed"),
    ("peer-gone", "peer-gone"),
    ("link-down", "link-down"),
    ("protocol", "protocol-error"),
    ("refused", "timeout"),
])
def test_failures_are_retried_then_reported(run_mp, failure, reason):
    r = dial(run_mp, [failure] * 3, user="u", key="k", retries=3, then=LEAKS)
    assert r["err"] == reason
    assert len(connects(r["log"])) == 3 and fresh_dials(r["log"])  # each dial after a dead link starts afresh
    assert r["leaked"] == 0  # no PPP state freed while lwIP still held it


def test_a_silent_peer_is_waited_for_never_torn_down(run_mp):
    # Nobody answers (the modem is away): every attempt waits on the same negotiation. Closing or freeing it
    # would lose lwIP's only PPP control block for good (MicroPython 1.25); once the peer answers, it is up.
    r = dial(run_mp, ["silent"], retries=3, then=LEAKS)
    assert r["err"] == "timeout" and r["status"] == 3  # still negotiating
    assert connects(r["log"]) == [[0, None, None]] and ["del"] not in r["log"] and ["disconnect"] not in r["log"]
    r = dial(run_mp, ["silent"], retries=2, then="""
network.answer()
board.connect_network(None, None, timeout_s=5)
""" + LEAKS)
    assert board_up(r) and len(connects(r["log"])) == 1 and r["leaked"] == 0


def board_up(r):
    return r["status"] == 4


def test_transient_failure_then_success(run_mp):
    r = dial(run_mp, ["peer-gone", "auth-failed", "ok"], user="u", key="k", retries=3)
    assert r["err"] is None and r["ok"] is True and len(connects(r["log"])) == 3


def test_retries_stop_at_the_limit(run_mp):
    r = dial(run_mp, ["peer-gone", "peer-gone", "ok"], retries=2)
    assert r["err"] == "peer-gone" and len(connects(r["log"])) == 2


def test_a_lost_ppp_state_is_what_the_stand_in_models(run_mp):
    # The stand-in's model of 1.25's defect, checked, so the tests above mean something: free a link being
    # negotiated and the next connect() fails for good.
    r = run_board(run_mp, BOARD, """
p = network.PPP(machine.UART(0))
p.connect()
p.__del__()
try:
    p.connect()
    after = "connected"
except OSError as e:
    after = str(e)
print(json.dumps([network.LEAKED[0], after]))
""")
    assert r == [1, "pppos_create failed"]


@pytest.mark.parametrize("drop, status", [("peer-gone", -9), ("link-down", -6)])
def test_link_lost_later_is_dialled_again(run_mp, drop, status):
    r = dial(run_mp, ["ok", "ok"], timeout=5, then="""
up = board.network_ok()
network.drop(%r)
lost = board.network_ok()
lost_status = board._ppp[0].status()
mark = len(network.LOG)
board.connect_network(None, None)
print(json.dumps({"up": up, "lost": lost, "lost_status": lost_status, "ok": board.network_ok(),
                  "again": network.LOG[mark:], "uarts": len(machine.UARTS)}))
""" % drop)
    assert r["up"] is True and r["lost"] is False and r["lost_status"] == status
    assert r["again"] == [["del"], ["connect", 0, None, None]] and r["ok"] is True
    assert r["uarts"] == 1  # the same UART and PPP object, a new PPP state


@pytest.mark.parametrize("missing", [
    "del machine.UART",
    "machine.UART_BROKEN = True",
    "del network.PPP",
    "network.BROKEN = True",
])
def test_no_interface(run_mp, missing):
    r = dial(run_mp, ["ok"], before=missing)
    assert r == {"err": "no-interface", "ok": False, "log": []}


def test_uart0_with_flow_control_and_the_modules_rx_buffer(run_mp):
    r = dial(run_mp, ["ok"], timeout=5, then="""
print(json.dumps({"uarts": machine.UARTS, "flow": machine.UART.RTS | machine.UART.CTS, "rxbuf": board.RXBUF,
                  "txbuf": board.TXBUF, "stream": network._links[0].stream.args is machine.UARTS[0]}))
""")
    assert r["uarts"] == [{"id": 0, "baudrate": 115200, "rxbuf": r["rxbuf"], "txbuf": r["txbuf"], "flow": r["flow"]}]
    assert r["flow"] == 3  # RTS and CTS
    assert r["txbuf"] >= 4096  # PPP's writes never wait for the UART (a waiting one hung lwIP on the chip)
    assert r["stream"] is True  # the PPP runs over that UART


def test_led_on_gp25(run_mp):
    r = run_board(run_mp, BOARD, """
states = []
for on in (True, False, True):
    board.led(on)
    states.append(sorted(machine.PINS.items()))
print(json.dumps(states))
""")
    assert r == [[[25, 1]], [[25, 0]], [[25, 1]]]  # the one pin is GP25


def test_reset_flash_root_and_no_ssid_needed(run_mp):
    r = run_board(run_mp, BOARD, """
try:
    board.reset()
except SystemExit:
    pass
print(json.dumps([len(machine.RESETS), board.flash_root(), board.NAME, board.NEEDS_SSID]))
""")
    assert r == [1, "/", BOARD, False]


def test_compiled_in_a_small_heap(run_mp, compiled):
    r = dial(run_mp, ["auth-failed", "ok"], user="u", key="k", mpy=True, compiled=compiled, heapsize="64K")
    assert r["err"] is None and r["ok"] is True and len(connects(r["log"])) == 2


# SNTP against UDP servers on the host.

NTP_DELTA = 2208988800  # 1900 -> 1970
WHEN = datetime.datetime(2025, 3, 16, 23, 59, 58, tzinfo=datetime.timezone.utc)  # a Sunday
DECOY = datetime.datetime(2001, 9, 9, 1, 46, 40, tzinfo=datetime.timezone.utc)  # what bad replies claim


def ntp_seconds(when):
    return calendar.timegm(when.utctimetuple()) + NTP_DELTA


def reply(when=WHEN, li=0, mode=4, stratum=2, length=48, seconds=None):
    """An SNTP answer (RFC 4330 section 4), or a mangled one."""
    packet = bytearray(48)
    packet[0] = li << 6 | 4 << 3 | mode
    packet[1] = stratum
    packet[40:48] = struct.pack("!II", ntp_seconds(when) if seconds is None else seconds, 0x80000000)
    return bytes(packet[:length])


def rtc_tuple(when):
    """What the board hands machine.RTC().datetime(): MicroPython's weekday (Monday 0) plus one."""
    return [when.year, when.month, when.day, when.weekday() + 1, when.hour, when.minute, when.second, 0]


class NtpServer:
    """A UDP server on 127.0.0.1 that answers every request with `answer` (None: never answers)."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            self.requests.append(data)
            if self.answer is not None:
                self.sock.sendto(self.answer, peer)

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def ntp_server():
    servers = []

    def start(answer):
        servers.append(NtpServer(answer))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


SNTP = """
board._Sntp.timeout_s = 0.3
try:
    board.set_time(%(servers)r, retries=%(retries)d)
    err = None
except board.TimeError as e:
    err = str(e)
print(json.dumps({"err": err, "set": machine.RTC_SET}))
"""


def set_time(run_mp, servers, retries=1):
    return run_board(run_mp, BOARD, SNTP % {"servers": [s.address for s in servers], "retries": retries})


def test_sntp_sets_the_rtc_to_the_servers_utc_time(run_mp, ntp_server):
    server = ntp_server(reply(WHEN))
    r = set_time(run_mp, [server])
    assert r == {"err": None, "set": [rtc_tuple(WHEN)]}
    assert r["set"][0][3] == 7  # Sunday: MicroPython's 6, plus one
    assert [(len(q), q[0]) for q in server.requests] == [(48, 0x23)]  # one request: version 4, client


@pytest.mark.parametrize("bad", [
    reply(DECOY, length=47),  # truncated
    reply(DECOY, mode=3),  # a client's packet, not a server's answer
    reply(DECOY, stratum=0),  # kiss-o'-death
    reply(DECOY, stratum=16),  # unsynchronised
    reply(DECOY, li=3),  # alarm: the server's clock is not synchronised
    reply(seconds=0),  # no transmit time
], ids=["short", "mode-3", "stratum-0", "stratum-16", "leap-3", "zero-transmit"])
def test_sntp_refuses_a_useless_reply_and_asks_the_next_server(run_mp, ntp_server, bad):
    liar, good = ntp_server(bad), ntp_server(reply(WHEN))
    r = set_time(run_mp, [liar, good])
    assert r == {"err": None, "set": [rtc_tuple(WHEN)]}
    assert len(liar.requests) == 1 and len(good.requests) == 1


def test_sntp_server_that_never_answers_times_out_then_the_next_answers(run_mp, ntp_server):
    silent, good = ntp_server(None), ntp_server(reply(WHEN))
    r = set_time(run_mp, [silent, good])
    assert r == {"err": None, "set": [rtc_tuple(WHEN)]}
    assert len(silent.requests) == 1


def test_sntp_all_servers_fail(run_mp, ntp_server):
    servers = [ntp_server(reply(stratum=0)), ntp_server(None)]
    r = set_time(run_mp, servers, retries=2)
    assert r == {"err": "no answer from %s, %s" % (servers[0].address, servers[1].address), "set": []}
    assert [len(s.requests) for s in servers] == [2, 2]


def test_sntp_after_the_2036_era_rollover(run_mp, ntp_server):
    # NTP seconds wrap on 2036-02-07 06:28:16 UTC; RFC 4330 section 3: with the top bit clear, the time is in
    # the next era, not 1900.
    after = datetime.datetime(2036, 2, 7, 6, 29, 56, tzinfo=datetime.timezone.utc)
    r = set_time(run_mp, [ntp_server(reply(seconds=100))])
    assert r == {"err": None, "set": [rtc_tuple(after)]}
