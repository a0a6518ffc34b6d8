# One connection attempt, top to bottom: network, clock, DPS registration (when the device has no
# hub yet, or must register again), credentials (a token minted on the chip, one from the solution's
# token service, or the X.509 files), the root set chosen before any socket exists, TLS + CONNECT
# through umqtt, and the roots told the outcome once. Loaded only while connecting (with sas, mqtt
# and umqtt), then unloaded by the session: none of this code is on the heap while connected.
from iothub import clock, topics, transport, wire
from iothub.transport import why


class Failure(Exception):
    # The attempt failed. .kind: "wait" (log and back off), "memory" (the heap; counted towards a
    # clean reset), "refused" (CONNACK .code: 4/5 are retried slowly).
    def __init__(self, kind, msg, code=0):
        super().__init__(msg)
        self.kind = kind
        self.code = code


def _file(root, name):
    import os

    path = root + "/" + name
    if os.stat(path)[6] > 8192:
        raise ValueError("%s is larger than 8192 bytes" % name)
    with open(path, "rb") as f:
        return f.read()


def _clock(set_clock, log):
    # Tokens need the time: an unset clock mints nothing (and NTP is asked again).
    try:
        return clock.require_set()
    except ValueError as e:
        if set_clock is not None:
            try:
                set_clock()
            except Exception as e2:
                log("setting the clock failed: %s" % (str(e2) or why(e2)))
        raise Failure("wait", "cannot mint a token: %s" % e)


def _x509(cfg, root):
    x = cfg["x509"]
    try:
        return _file(root, x["cert"]), _file(root, x["key"])
    except (OSError, ValueError) as e:
        raise Failure("wait", "x509 certificate or key unusable on flash: %s" % why(e))


def _credentials(cfg, key, roots, now, state, log):
    # -> (password, expiry, cert, key). Never logged.
    if cfg["auth"] == "x509":
        return ("", None) + _x509(cfg, state["root"])
    if cfg["auth"] == "token-service":
        from iothub import tokenclient

        try:
            tok = tokenclient.fetch(cfg, key, _active(roots), log)
            state["token"] = tok
        except Failure as f:
            tok = state.get("token")
            if tok is None or tok[1] - now < 30:
                raise
            log("%s: connecting with the current token (valid %d s more)" % (f, tok[1] - now))
        finally:
            tokenclient = None
            transport._unload("tokenclient")
        return tok[0], tok[1], None, None
    exp = now + cfg["token_ttl"]
    from iothub import sas

    try:
        return sas.device_token(cfg["hostname"], cfg["device_id"], key, expiry=exp), exp, None, None
    except ValueError as e:
        raise Failure("wait", "cannot mint a token: %s" % e)
    finally:  # needed once an hour: its ~4 KB of code are off the heap for the TLS handshake
        sas = None
        transport._unload("sas", "crypto")


def _active(roots):
    # The active root set's bytes (for HTTPS to the token service: its certificate chains to them too).
    data = roots.active_data()
    if data is None:
        data = roots.use(lambda s: s._data("active"))
    if data is None:
        raise Failure("wait", "no valid root certificates on flash")
    return data


def _register(cfg, key, roots, state, log):
    # DPS: the hub and device id for this registration (saved on flash), before the hub is dialled.
    cert = ckey = None
    if cfg["auth"] == "x509":
        cert, ckey = _x509(cfg, state["root"])
    from iothub import dps

    try:
        cfg["hostname"], cfg["device_id"] = dps.register(cfg, key, roots, state["root"], cert, ckey, log)
    finally:
        dps = None
        transport._unload("dps", "config")
    state["reprovision"] = False


def dial(cfg, key, roots, state, net, set_clock, log):
    # -> (wire.Conn, token expiry or None for X.509, SUBSCRIBE packet id). Raises Failure.
    # state: what the session keeps between attempts ("root" of the flash, the token service's last
    # token, "reprovision" to register with DPS again).
    if net is not None:
        try:
            net()
        except Exception as e:
            raise Failure("wait", "network unavailable: %s" % getattr(e, "reason", why(e)))
    now = _clock(set_clock, log) if cfg["auth"] != "x509" else None
    try:
        if cfg.get("dps") and (not cfg.get("hostname") or state.get("reprovision")):
            _register(cfg, key, roots, state, log)
        password, expiry, cert, ckey = _credentials(cfg, key, roots, now, state, log)
        att = roots.attempt()  # the root set is chosen here, before any socket exists
    except MemoryError:
        raise Failure("memory", "not enough memory to prepare the connection")
    except ValueError as e:  # no valid roots on flash
        raise Failure("wait", "cannot connect: %s" % e)
    try:
        from iothub import handshake, mqtt  # TLS and the umqtt adapter (and umqtt itself)
    except MemoryError:
        att.done("untried")
        transport._unload("handshake", "mqtt", "umqtt.simple", "umqtt")
        raise Failure("memory", "not enough memory to load umqtt")
    host = cfg["hostname"]
    try:
        sock, raw = mqtt.connect(cfg["device_id"], cfg["gateway"] or host, cfg["port"],
                                 topics.username(host, cfg["device_id"]), password, cfg["keepalive"],
                                 handshake.params(host, att.data, cert, ckey, cfg["io_timeout"]))
    except handshake.TLSError as e:
        att.done("verify" if e.kind == "verify" else "untried")
        raise Failure("memory" if e.kind == "memory" else "wait", str(e) if e.kind == "memory" else "TLS refused: %s" % e)
    except mqtt.Refused as e:
        att.done("ok")
        raise Failure("refused", "CONNECT refused", e.code)
    except mqtt.Failed as e:
        att.done("ok" if e.tls else "untried")
        raise Failure("memory" if e.memory else "wait", "not enough memory to connect" if e.memory else
                      "connect failed: %s" % e)
    except MemoryError:
        att.done("untried")
        raise Failure("memory", "not enough memory to connect")
    finally:
        password = handshake = mqtt = None
        transport._unload("handshake", "mqtt", "umqtt.simple")
    att.done("ok")
    c = wire.Conn(sock, raw, cfg["io_timeout"] * 1000)
    pid = c.next_pid()
    _subscribe(c, pid, topics.subscriptions(cfg["device_id"]))
    return c, expiry, pid


def _subscribe(c, pid, filters):
    # One SUBSCRIBE for every (filter, qos): one round trip on connect. The SUBACK comes through
    # the session's reads.
    n = 2
    for f, q in filters:
        n += 2 + len(f) + 1
    pkt = bytearray(5 + n)
    pkt[0] = 0x82
    i = wire._size(n, pkt, 1)
    pkt[i] = pid >> 8
    pkt[i + 1] = pid & 0xFF
    i += 2
    for f, q in filters:
        b = f.encode()
        pkt[i] = len(b) >> 8
        pkt[i + 1] = len(b) & 0xFF
        pkt[i + 2:i + 2 + len(b)] = b
        i += 2 + len(b)
        pkt[i] = q
        i += 1
    c.write(memoryview(pkt)[:i])
