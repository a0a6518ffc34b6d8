# The IoT Hub session: the one module that owns the socket, TLS and umqtt.
#
# Failure model (what can go wrong, what the session does; each path is tested):
#   Wi-Fi lost       network_ok() turns false: the connection is dropped, net() is asked to bring
#                    the radio back on every attempt, attempts back off.
#   broker lost      EOF/OSError on read or write, or nothing heard for 1.5 x keep-alive: close,
#                    back off (exponential, jittered, capped), reconnect, resubscribe, re-send
#                    every message not yet PUBACKed (at least once; nothing queued is lost).
#   TLS failure      server not signed by the pinned roots, wrong hostname, expired, not TLS,
#                    TLS < 1.2: the handshake is refused before CONNECT, so the token never
#                    leaves the device; reported to the cert store (tls_failed), back off.
#   token expired    never waited for: at expiry - margin the session disconnects cleanly and
#                    reconnects with a fresh token, queue intact. If dropped anyway, the next
#                    connect mints a new token.
#   clock unset      minting refuses (clock.require_set); set_clock() is asked, back off.
#   CONNECT refused  CONNACK 4/5 (bad credentials, disabled or unknown device): logged once,
#                    retried every `refused_retry` s (slow, never a hot loop) until accepted; the
#                    clock is re-read each time (a drifted clock makes tokens look expired).
# Logs never contain the device key or the token.
import json
import time
import select

from iothub import clock, topics, transport
from iothub.backoff import Backoff

_REFUSED = {1: "protocol version", 2: "client id rejected", 3: "server unavailable",
            4: "bad user name or password", 5: "not authorized"}


def _log(msg):
    print("iothub:", msg)


class Session:
    def __init__(self, cfg, secrets, certs, root="", log=_log, net=None, network_ok=None, set_clock=None):
        self.cfg = cfg
        self.device_id = cfg["device_id"]
        self.hostname = cfg["hostname"]
        self._key = secrets.get("device_key") if secrets else None
        self.certs = certs  # certstore.Store: roots_for_connect() -> (data, slot), tls_ok/tls_failed(slot)
        self._slot = None
        self.root = root.rstrip("/")
        self.log = log
        self.net = net  # brings the network up (raises when it cannot)
        self.network_ok = network_ok
        self.set_clock = set_clock
        # Application hooks.
        self.on_c2d = None  # f(body: bytes, properties: dict)
        self.on_desired = None  # f(desired: dict, version: int), full twin or patch, in $version order
        self.on_twin = None  # f(twin: dict) after get_twin()
        self.on_method = None  # f(name, payload) -> (status, payload)
        self.max_queue = 16  # telemetry kept while offline (~200 bytes each on the heap)
        self.connected = False
        self.refused = None  # CONNACK code while the hub refuses us
        self.connects = 0
        self.dropped = 0
        self._outbox = []  # [topic, body] not yet PUBACKed; survives reconnects
        self._inbox = []
        self._c = None
        self._poller = None
        ttl = cfg.get("token_ttl", 3600)
        self._margin = min(120, max(2, ttl // 5))
        self._backoff = Backoff(1000, cfg.get("retry_cap", 60) * 1000)
        self._next_try = time.ticks_ms()
        self._renew_at = None
        self._last_tx = self._last_rx = 0
        self._desired_version = -1
        self._twin_rid = None

    # ---- application API

    def send(self, body, properties=None, content_type="application/json", encoding="utf-8"):
        # Telemetry, QoS 1: queued, sent by poll(), dropped from the queue only once PUBACKed.
        if not isinstance(body, (str, bytes, bytearray)):
            body = json.dumps(body)
        self._queue(topics.telemetry(self.device_id, properties, content_type, encoding), body)

    def report(self, patch):
        # Twin reported-properties patch; the hub answers 204 on $iothub/twin/res.
        self._queue(topics.twin_reported(topics.next_rid()), json.dumps(patch))

    def get_twin(self):
        if self.connected:
            self._twin_rid = topics.next_rid()
            self._c.publish(topics.twin_get(self._twin_rid), b"")
            self._last_tx = time.ticks_ms()

    def pending(self):
        return len(self._outbox)

    def poll(self, wait_ms=0):
        # One step: (re)connect when due, renew, send queued messages, ping, read for up to wait_ms.
        if not self.connected:
            left = time.ticks_diff(self._next_try, time.ticks_ms())
            if left > 0:
                time.sleep_ms(min(wait_ms, left))
                return False
            try:
                self._connect()
            except Exception as e:  # e.g. the twin GET right after CONNACK hit a dead socket
                self._lost(e)
            if not self.connected:
                return False
        try:
            if self.network_ok is not None and not self.network_ok():
                raise OSError("network down")
            if self._renew_at is not None and clock.now() >= self._renew_at:
                self.log("renewing token before it expires")
                self._close(True)
                self._connect()
                if not self.connected:
                    return False
            self._flush()
            self._keepalive()
            self._read(wait_ms)
            self._dispatch()
        except Exception as e:  # every transport failure ends here; app callbacks are guarded
            self._lost(e)
        return self.connected

    def close(self):
        self._close(True)

    # ---- connection

    def _retry(self):
        d = self._backoff.next_ms()
        self.log("retry in %d ms (attempt %d)" % (d, self._backoff.attempt))
        self._next_try = time.ticks_add(time.ticks_ms(), d)

    def _password(self):
        # Returns (token, expiry) or raises ValueError for an unset clock. Never logged.
        t = clock.require_set()
        exp = t + self.cfg.get("token_ttl", 3600)
        from iothub import sas

        try:
            return sas.device_token(self.hostname, self.device_id, self._key, expiry=exp), exp
        finally:  # needed once an hour: its ~4 KB of code are off the heap for the TLS handshake
            sas = None
            transport._unload("sas", "crypto")

    def _connect(self):
        from umqtt.simple import MQTTException

        if self.net is not None:
            try:
                self.net()
            except Exception as e:
                self.log("network unavailable: %s" % getattr(e, "reason", e))
                self._retry()
                return
        cert = key = None
        if self.cfg.get("auth") == "x509":
            password, expiry = "", None
            x = self.cfg["x509"]
            try:
                cert = self._file(x["cert"])
                key = self._file(x["key"])
            except OSError:
                self.log("x509 certificate or key missing on flash")
                self._retry()
                return
        else:
            try:
                password, expiry = self._password()
            except ValueError as e:
                self.log("cannot mint a token: %s" % e)
                if self.set_clock is not None:
                    try:
                        self.set_clock()
                    except Exception as e2:
                        self.log("setting the clock failed: %s" % e2)
                self._retry()
                return
        self._slot = None
        addr = self.cfg.get("gateway") or self.hostname
        c = transport.client(self.device_id, addr, self.cfg.get("port", 8883),
                             topics.username(self.hostname, self.device_id), password,
                             self.cfg.get("keepalive", 60), transport.params(self.hostname, self._roots, cert, key))
        password = None
        c.set_callback(self._on_msg)
        try:
            c.connect()
        except transport.TLSError as e:
            if self._slot is not None:
                self.certs.tls_failed(self._slot)
            self.log("TLS refused: %s" % e)
            self._retry()
            return
        except MQTTException as e:
            self._drop(c)
            code = e.args[0] if e.args else 0
            if code in (4, 5):
                if self.refused != code:
                    self.log("CONNECT refused by the hub: %s (CONNACK %d); retrying every %d s"
                             % (_REFUSED[code], code, self.cfg.get("refused_retry", 300)))
                self.refused = code
                if self.set_clock is not None and expiry is not None:
                    try:  # a drifted clock makes tokens the hub calls expired: re-read the time
                        self.set_clock()
                    except Exception:
                        pass
                self._next_try = time.ticks_add(time.ticks_ms(), self.cfg.get("refused_retry", 300) * 1000)
                return
            self.log("CONNECT refused: %s (CONNACK %d)" % (_REFUSED.get(code, "?"), code))
            self._retry()
            return
        except Exception as e:  # OSError, or an EOF umqtt trips over (IndexError/AssertionError)
            self._drop(c)
            self.log("connect failed: %s" % _why(e))
            self._retry()
            return
        self.certs.tls_ok(self._slot)
        try:
            for f, q in topics.subscriptions(self.device_id):
                c.subscribe(f, q)
        except Exception as e:
            self._drop(c)
            self.log("subscribe failed: %s" % _why(e))
            self._retry()
            return
        self._c = c
        self._poller = select.poll()
        self._poller.register(c.sock, select.POLLIN)
        self.connected = True
        self.refused = None
        self.connects += 1
        self._backoff.reset()
        now = time.ticks_ms()
        self._last_tx = self._last_rx = now
        if expiry is None:
            self._renew_at = None  # certificates are not renewed by reconnecting
            self.log("connected to %s as %s (x509)" % (self.hostname, self.device_id))
        else:
            self._renew_at = expiry - self._margin
            self.log("connected to %s as %s (token valid %d s)"
                     % (self.hostname, self.device_id, expiry - clock.now()))
        # Resync desired properties missed while away; $version ordering drops stale ones.
        self.get_twin()

    def _roots(self):
        data, self._slot = self.certs.roots_for_connect()
        return data

    def _file(self, name):
        with open(self.root + "/" + name, "rb") as f:
            return f.read()

    def _drop(self, c):
        try:
            c.sock.close()
        except Exception:
            pass

    def _close(self, graceful):
        c = self._c
        self._c = None
        self.connected = False
        self._inbox = []
        if c is None:
            return
        try:
            self._poller.unregister(c.sock)
        except Exception:
            pass
        try:
            if graceful:
                c.disconnect()
            else:
                c.sock.close()
        except Exception:
            self._drop(c)

    def _lost(self, e):
        self.log("connection lost: %s" % _why(e))
        self._close(False)
        self._retry()

    # ---- traffic

    def _queue(self, topic, body):
        if len(self._outbox) >= self.max_queue:
            self._outbox.pop(0)
            self.dropped += 1
            if self.dropped % 10 == 1:  # not a line per message during a long outage
                self.log("queue full: dropped the oldest message (%d so far)" % self.dropped)
        self._outbox.append((topic, body))

    def _flush(self):
        while self._outbox and self.connected:
            topic, body = self._outbox[0]
            self._c.publish(topic, body, qos=1)  # returns once PUBACKed; raises on failure
            self._outbox.pop(0)
            self._last_tx = self._last_rx = time.ticks_ms()
            self._dispatch()

    def _keepalive(self):
        ka = self.cfg.get("keepalive", 60) * 1000
        now = time.ticks_ms()
        if time.ticks_diff(now, self._last_rx) > ka + ka // 2:
            raise OSError("no answer from the hub for 1.5 x keep-alive")
        if time.ticks_diff(now, self._last_tx) >= ka // 2:
            self._c.ping()
            self._last_tx = now

    def _read(self, wait_ms):
        ka = self.cfg.get("keepalive", 60) * 500
        wait = wait_ms if wait_ms < ka else ka
        for _ in range(16):  # bounded: let the app run between bursts
            ev = self._poller.poll(wait)
            if not ev:
                return
            if ev[0][1] & (select.POLLHUP | select.POLLERR):
                raise OSError("closed by the hub")
            op = self._c.wait_msg()
            self._last_rx = time.ticks_ms()
            if op is not None and op & 0xF0 != 0x30:
                # 1.3.4 hands back packets it does not know without reading them: skip the body.
                n = self._c._recv_len()
                if n:
                    self._c.sock.read(n)
            wait = 0

    def _on_msg(self, topic, msg):
        # Called inside umqtt (even while a publish waits for its PUBACK): only queue.
        self._inbox.append((topic, msg))

    def _dispatch(self):
        while self._inbox and self.connected:
            topic, msg = self._inbox.pop(0)
            t = topics.parse(topic, self.device_id)
            if t is None:
                continue
            kind = t[0]
            if kind == "c2d":
                self._call(self.on_c2d, msg, t[1])
            elif kind == "method":
                self._method(t[1], t[2], msg)
            elif kind == "desired":
                self._desired(_json(msg), t[1])
            elif kind == "twin":
                status, rid = t[1], t[2]
                if rid is not None and rid == self._twin_rid:
                    self._twin_rid = None
                    doc = _json(msg)
                    if status == 200 and isinstance(doc, dict):
                        self._call(self.on_twin, doc)
                        d = doc.get("desired")
                        if isinstance(d, dict):
                            self._desired(d, d.get("$version"))
                    else:
                        self.log("twin GET answered %d" % status)
                elif status >= 300:
                    self.log("twin request %s answered %d" % (rid, status))

    def _desired(self, patch, version):
        if not isinstance(patch, dict):
            return
        if version is None:
            version = patch.get("$version")
        if isinstance(version, int):
            if version <= self._desired_version:
                self.log("desired $version %d ignored (have %d)" % (version, self._desired_version))
                return
            self._desired_version = version
        self._call(self.on_desired, patch, version)

    def _method(self, name, rid, msg):
        status, payload = 404, {"error": "no method " + name}
        if self.on_method is not None:
            try:
                r = self.on_method(name, _json(msg))
                status, payload = r[0], r[1]
            except Exception as e:
                status, payload = 500, {"error": "method failed: %s" % type(e).__name__}
                self.log("method %s failed: %r" % (name, e))
        body = json.dumps(payload)
        self._c.publish(topics.method_response(status, rid), body)
        self._last_tx = time.ticks_ms()

    def _call(self, f, *args):
        if f is None:
            return
        try:
            f(*args)
        except Exception as e:  # an app bug must not tear the connection down
            self.log("callback failed: %r" % e)


def _json(msg):
    if not msg:
        return None
    try:
        return json.loads(msg)
    except ValueError:
        return None


def _why(e):
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        return "OSError %d" % e.args[0]
    return "%s %s" % (type(e).__name__, e)
