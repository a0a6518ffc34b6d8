# Stand-in for a board's `network` module (the Wi-Fi radio), for tests on the unix port.
# Each connect() takes the next outcome from SCENARIO ("ok" when empty):
#   "ok"              joins, then has an address
#   "ap-not-found"    the radio reports no such access point
#   "wrong-password"  the access point refuses the key
#   "dhcp-timeout"    joins the access point but never gets an address
#   "silent"          nothing ever answers
#   "refused"         connect() itself raises OSError (driver busy)
# LOG records the calls. use("esp32") / use("rp2") switches the status codes to that port's.
# PPP models MicroPython 1.25's network.PPP (extmod/network_ppp_lwip.c) with the same SCENARIO, LOG and
# BROKEN; each connect() takes the next outcome:
#   "ok"           the link comes up (connected)
#   "silent"       the peer never answers: connecting for ever
#   "auth-failed"  the peer refuses the PAP credentials  (status() -7, PPPERR_AUTHFAIL)
#   "peer-gone"    the peer stops answering LCP echoes   (-9, PPPERR_PEERDEAD)
#   "link-down"    the peer ends the link                (-6, PPPERR_CONNECT)
#   "protocol"     negotiation fails                     (-8, PPPERR_PROTOCOL)
#   "refused"      connect() itself raises OSError ("ppp_connect failed": lwIP still closing)
# drop() ends every established link later (peer dead, or another reason's code).
import time

STA_IF = 0
AP_IF = 1
SCENARIO = []
LOG = []
JOIN_MS = 30  # how long joining takes before the outcome shows
BROKEN = False  # True: no Wi-Fi interface at all
_state = {"active": False, "outcome": None, "since": 0}


def use(flavour):
    g = globals()
    g["FLAVOUR"] = flavour
    if flavour == "esp32":  # ports/esp32/modnetwork_globals.h (IDF wifi reason codes)
        g.update(STAT_IDLE=1000, STAT_CONNECTING=1001, STAT_GOT_IP=1010, STAT_BEACON_TIMEOUT=200,
                 STAT_NO_AP_FOUND=201, STAT_WRONG_PASSWORD=202, STAT_ASSOC_FAIL=203, STAT_CONNECT_FAIL=203,
                 STAT_HANDSHAKE_TIMEOUT=204)
    else:  # extmod/network_cyw43.c: CYW43 link status
        g.update(STAT_IDLE=0, STAT_CONNECTING=1, STAT_GOT_IP=3, STAT_CONNECT_FAIL=-1, STAT_NO_AP_FOUND=-2,
                 STAT_WRONG_PASSWORD=-3)


use("esp32")


def _joined_since(since):
    return time.ticks_diff(time.ticks_ms(), since) >= JOIN_MS


def _joined():
    return _joined_since(_state["since"])


class WLAN:
    def __init__(self, itf=STA_IF):
        if BROKEN:
            raise OSError(19)  # ENODEV
        self.itf = itf

    def active(self, value=None):
        if value is None:
            return _state["active"]
        LOG.append(("active", bool(value)))
        _state["active"] = bool(value)

    def connect(self, ssid, key=None):
        outcome = SCENARIO.pop(0) if SCENARIO else "ok"
        LOG.append(("connect", ssid, key))
        if not _state["active"]:
            raise OSError(1)  # the real driver refuses while inactive
        if outcome == "refused":
            raise OSError(16)  # EBUSY
        _state["outcome"] = outcome
        _state["since"] = time.ticks_ms()

    def disconnect(self):
        LOG.append(("disconnect",))
        _state["outcome"] = None

    def isconnected(self):
        return _state["outcome"] == "ok" and _joined()

    def status(self, param=None):
        outcome = _state["outcome"]
        if param == "rssi":
            if outcome in ("ok", "dhcp-timeout") and _joined():
                return -58
            raise OSError(128)  # ENOTCONN: RSSI exists only once associated
        if param is not None:
            raise ValueError("unknown status param")
        if outcome is None:
            return STAT_IDLE  # noqa: F821 (set by use())
        if not _joined() or outcome == "silent":
            return STAT_CONNECTING  # noqa: F821
        if outcome == "ok":
            return STAT_GOT_IP  # noqa: F821
        if outcome == "ap-not-found":
            return STAT_NO_AP_FOUND  # noqa: F821
        if outcome == "wrong-password":
            return STAT_WRONG_PASSWORD  # noqa: F821
        # dhcp-timeout: ESP32 still says "connecting"; the CYW43 says joined-without-IP (2).
        return STAT_CONNECTING if FLAVOUR == "esp32" else 2  # noqa: F821

    def ifconfig(self):
        return ("10.0.0.7" if self.isconnected() else "0.0.0.0", "255.255.255.0", "10.0.0.1", "10.0.0.1")


_PPP_ERRORS = {"link-down": 6, "auth-failed": 7, "protocol": 8, "peer-gone": 9}  # lwIP's PPPERR_*
_PPP_INACTIVE, _PPP_ACTIVE, _PPP_ERROR, _PPP_CONNECTING, _PPP_CONNECTED = 0, 1, 2, 3, 4
_links = []  # every PPP made, for drop() and answer()
# lwIP has one PPP control block (MEMP_NUM_PPP_PCB). MicroPython 1.25 loses it for good when a link being
# negotiated or up is closed or freed (__del__, disconnect): every later connect() raises "pppos_create failed"
# (seen on the rp2 image). PCBS counts the blocks left; LEAKED how many were lost.
PCBS = [1]
LEAKED = [0]


def drop(outcome="peer-gone"):
    """The established links fail now, as lwIP reports it (status() minus the PPPERR code)."""
    for link in _links:
        if link.isconnected():
            link._state, link._err = _PPP_ERROR, _PPP_ERRORS[outcome]


def answer():
    """The peer that stayed silent answers now (a modem back after a reset): negotiations under way complete."""
    for link in _links:
        if link._state == _PPP_CONNECTING and link._outcome == "silent":
            link._outcome, link._since = "ok", time.ticks_add(time.ticks_ms(), -JOIN_MS)


class PPP:
    SEC_NONE = 0
    SEC_PAP = 1
    SEC_CHAP = 2

    def __init__(self, stream):
        if BROKEN:
            raise OSError(19)  # ENODEV
        if not (hasattr(stream, "read") and hasattr(stream, "write")):
            raise TypeError("stream operation not supported")
        LOG.append(("PPP",))
        self.stream = stream
        self._state, self._err, self._outcome, self._since = _PPP_INACTIVE, 0, None, 0
        _links.append(self)

    def _settle(self):
        if self._state == _PPP_CONNECTING and self._outcome != "silent" and _joined_since(self._since):
            if self._outcome == "ok":
                self._state = _PPP_CONNECTED
            else:
                self._state, self._err = _PPP_ERROR, _PPP_ERRORS[self._outcome]

    def connect(self, *, security=0, user=None, key=None):
        self._settle()
        if self._state == _PPP_INACTIVE:
            if not PCBS[0]:
                LOG.append(("connect-failed",))
                raise OSError("pppos_create failed")
            PCBS[0] -= 1
            self._state = _PPP_ACTIVE  # pppos_create
        if self._state in (_PPP_CONNECTING, _PPP_CONNECTED):
            raise OSError(114)  # EALREADY
        outcome = SCENARIO.pop(0) if SCENARIO else "ok"
        LOG.append(("connect", security, user, key))
        if security not in (PPP.SEC_NONE, PPP.SEC_PAP, PPP.SEC_CHAP):
            raise ValueError("invalid auth")
        if security != PPP.SEC_NONE and not (isinstance(user, str) and isinstance(key, str)):
            raise TypeError("can't convert NoneType to str")
        if outcome == "refused":
            raise OSError("ppp_connect failed")
        self._state, self._err, self._outcome, self._since = _PPP_CONNECTING, 0, outcome, time.ticks_ms()

    def status(self):
        self._settle()
        return -self._err if self._state == _PPP_ERROR else self._state

    def isconnected(self):
        self._settle()
        return self._state == _PPP_CONNECTED

    def _release(self):
        self._settle()
        if self._state in (_PPP_CONNECTING, _PPP_CONNECTED):
            LEAKED[0] += 1  # the block is gone: state inactive, lwIP still holds it
        elif self._state != _PPP_INACTIVE:
            PCBS[0] += 1
        self._state, self._err, self._outcome = _PPP_INACTIVE, 0, None

    def disconnect(self):
        LOG.append(("disconnect",))
        if self._state in (_PPP_CONNECTING, _PPP_CONNECTED):
            self._release()

    def __del__(self):
        LOG.append(("del",))
        self._release()
