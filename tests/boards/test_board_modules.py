"""boards/esp32 and boards/rp2_pico_w on the unix port, with the hardware replaced by the
stand-ins in tests/boards/standins/ (they model an absent AP, a wrong key, a DHCP server that
never answers, NTP that cannot be reached). Checked as source and compiled (.mpy, 64K heap). The RP2040's
watchdog and sensor tests run on boards/rp2_pico_ppp too; its PPP link: test_ppp_board.py."""
import pytest

from boardrun import ROOT, run_board

BOARDS = ("esp32", "rp2_pico_w")  # the Wi-Fi boards (boards/rp2_pico_ppp: test_ppp_board.py)
RP2_BOARDS = ("rp2_pico_w", "rp2_pico_ppp")  # the RP2040's watchdog and sensor, through iothub.station


@pytest.fixture(params=BOARDS)
def board(request):
    return request.param


CONNECT = """
network.SCENARIO[:] = %(scenario)r
err = None
t0 = time.ticks_ms()
try:
    board.connect_network("home", "pw-1", timeout_s=%(timeout)s, retries=%(retries)d)
except board.NetworkError as e:
    err = e.reason
connects = [c for c in network.LOG if c[0] == "connect"]
print(json.dumps({"err": err, "connects": len(connects), "ok": board.network_ok(),
                  "args": list(connects[0][1:]) if connects else None,
                  "disconnects": len([c for c in network.LOG if c[0] == "disconnect"])}))
"""


def connect(run_mp, board, scenario, retries=3, timeout=0.3, **kw):
    return run_board(run_mp, board, CONNECT % {"scenario": scenario, "retries": retries, "timeout": timeout}, **kw)


def test_connects_and_is_idempotent(run_mp, board):
    r = run_board(run_mp, board, CONNECT % {"scenario": ["ok"], "retries": 3, "timeout": 5} + """
board.connect_network("home", "pw-1")
print(json.dumps({"connects": len([c for c in network.LOG if c[0] == "connect"]), "ok": board.network_ok()}))
""")
    assert r == {"connects": 1, "ok": True}


def test_first_connect_result(run_mp, board):
    r = connect(run_mp, board, ["ok"], timeout=5)
    assert r == {"err": None, "connects": 1, "ok": True, "args": ["home", "pw-1"], "disconnects": 0}


@pytest.mark.parametrize("failure, reason", [
    ("ap-not-found", "ap-not-found"),
    ("wrong-password", "wrong-password"),
    ("dhcp-timeout", "dhcp-timeout"),
    ("silent", "timeout"),
    ("refused", "timeout"),
])
def test_failures_are_retried_then_reported(run_mp, board, failure, reason):
    r = connect(run_mp, board, [failure] * 3, retries=3)
    assert r["err"] == reason
    assert r["connects"] == 3 and r["disconnects"] == 3
    assert r["ok"] is False


def test_transient_failure_then_success(run_mp, board):
    r = connect(run_mp, board, ["ap-not-found", "dhcp-timeout", "ok"], retries=3)
    assert r["err"] is None and r["connects"] == 3 and r["ok"] is True


def test_retries_stop_at_the_limit(run_mp, board):
    # The AP would come back on the third try, but only two are allowed.
    r = connect(run_mp, board, ["ap-not-found", "ap-not-found", "ok"], retries=2)
    assert r["err"] == "ap-not-found" and r["connects"] == 2


def test_no_interface(run_mp, board):
    r = run_board(run_mp, board, """
network.BROKEN = True
try:
    board.connect_network("home", "pw")
    err = None
except board.NetworkError as e:
    err = e.reason
print(json.dumps({"err": err, "ok": board.network_ok()}))
""")
    assert r == {"err": "no-interface", "ok": False}


NTP = """
ntptime.SCENARIO[:] = %(scenario)r
ntptime.DEFAULT = %(default)r
try:
    board.set_time(%(servers)r, retries=%(retries)d)
    err = None
except board.TimeError as e:
    err = str(e)
print(json.dumps({"err": err, "asked": ntptime.LOG, "set": ntptime.SET}))
"""


def test_ntp_tries_each_server_then_retries(run_mp, board):
    r = run_board(run_mp, board, NTP % {"scenario": ["unreachable", "short", "unreachable"], "default": "ok",
                                        "servers": ["ntp-a", "ntp-b"], "retries": 3})
    assert r == {"err": None, "asked": ["ntp-a", "ntp-b", "ntp-a", "ntp-b"], "set": ["ntp-b"]}


def test_ntp_unreachable(run_mp, board):
    r = run_board(run_mp, board, NTP % {"scenario": [], "default": "unreachable",
                                        "servers": ["ntp-a", "ntp-b"], "retries": 2})
    assert r["err"] == "no answer from ntp-a, ntp-b"
    assert r["asked"] == ["ntp-a", "ntp-b", "ntp-a", "ntp-b"] and r["set"] == []


def test_ntp_single_server_string(run_mp, board):
    r = run_board(run_mp, board, NTP % {"scenario": [], "default": "ok", "servers": "time.example", "retries": 1})
    assert r == {"err": None, "asked": ["time.example"], "set": ["time.example"]}


def test_led(run_mp, board):
    r = run_board(run_mp, board, """
board.led(True)
a = dict(machine.PINS)
board.led(False)
print(json.dumps({"on": list(a.items()), "off": list(machine.PINS.items())}))
""")
    pin = 2 if board == "esp32" else "LED"
    assert r == {"on": [[pin, 1]], "off": [[pin, 0]]}


def test_esp32_watchdog_takes_long_timeouts(run_mp):
    r = run_board(run_mp, "esp32", """
dog = board.watchdog(120000)
dog.feed()
print(json.dumps([[w.timeout, w.feeds] for w in machine.WDTS]))
""")
    assert r == [[120000, 1]]


@pytest.mark.parametrize("rp2_board", RP2_BOARDS)
def test_rp2_watchdog_beyond_the_hardware_limit(run_mp, rp2_board):
    r = run_board(run_mp, rp2_board, """
machine.WDT_MAX_MS = 8388
short = board.watchdog(5000)
dog = board.watchdog(120000)
hw = machine.WDTS[-1]
timer = machine.TIMERS[-1]
timer.fire()                      # fed recently: the timer keeps the hardware dog alive
fed_while_alive = hw.feeds
dog._last = time.ticks_add(time.ticks_ms(), -121000)  # the app stopped feeding 121 s ago
timer.fire()
timer.fire()
fed_after_hang = hw.feeds - fed_while_alive
dog.feed()
print(json.dumps({"short": short.timeout, "hw": hw.timeout, "period": timer.period,
                  "alive": fed_while_alive, "hang": fed_after_hang, "feed": hw.feeds}))
""")
    assert r == {"short": 5000, "hw": 8000, "period": 2000, "alive": 1, "hang": 0, "feed": 2}


def test_esp32_sensor(run_mp):
    r = run_board(run_mp, "esp32", """
import esp32
esp32.MCU_C = 41.5
new = board.read_sensor()
del esp32.mcu_temperature          # the original ESP32: Fahrenheit only
esp32.RAW_F = 122.0
old = board.read_sensor()
print(json.dumps([new, old]))
""")
    assert r[0] == 41.5
    assert abs(r[1] - 50.0) < 1e-6


@pytest.mark.parametrize("rp2_board", RP2_BOARDS)
def test_rp2_sensor(run_mp, rp2_board):
    # 0.706 V is 27 C; each degree warmer is 1.721 mV less.
    r = run_board(run_mp, rp2_board, """
machine.ADC_U16[4] = int(0.706 / 3.3 * 65535 + 0.5)
a = board.read_sensor()
machine.ADC_U16[4] = int((0.706 - 10 * 0.001721) / 3.3 * 65535 + 0.5)
b = board.read_sensor()
print(json.dumps([a, b]))
""")
    assert abs(r[0] - 27.0) < 0.05
    assert abs(r[1] - 37.0) < 0.05


def test_reset_and_flash_root(run_mp, board):
    r = run_board(run_mp, board, """
try:
    board.reset()
except SystemExit:
    pass
print(json.dumps({"resets": len(machine.RESETS), "root": board.flash_root(), "name": board.NAME}))
""")
    assert r == {"resets": 1, "root": "/", "name": board}


def test_compiled_in_a_small_heap(run_mp, board, compiled):
    r = run_board(run_mp, board, CONNECT % {"scenario": ["wrong-password", "ok"], "retries": 3, "timeout": 0.3},
                  mpy=True, compiled=compiled, heapsize="64K")
    assert r["err"] is None and r["connects"] == 2 and r["ok"] is True


def test_interface_matches_the_contract():
    """The names contracts.md lists, in every board module (unix included)."""
    names = ("NAME", "NetworkError", "TimeError", "connect_network", "network_ok", "set_time", "led", "watchdog",
             "read_sensor", "reset", "flash_root")
    for d in ("unix", "esp32", "rp2_pico_w", "rp2_pico_ppp"):
        src = (ROOT / "boards" / d / "board.py").read_text()
        for name in names:
            assert ("def %s(" % name in src) or ("class %s(" % name in src) or ("%s = " % name in src), (d, name)
