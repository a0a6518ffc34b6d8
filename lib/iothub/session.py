# The IoT Hub session: the one owner of the connection (through iothub.mqtt) and of everything a
# fleet relies on whatever the app is: telemetry kept until PUBACKed, renewal, reconnects, bounded
# inputs, and root rotation (`updateRootCerts`, `rootCerts`, the expiry alert: iothub.roots).
#
# An app: s = Session(cfg, secrets, root=...); set on_c2d/on_desired/on_method/on_twin; call
# s.send()/s.report() and s.poll(ms) in its loop. Data flows one way: config -> token -> roots
# chosen -> CONNECT -> SUBSCRIBE -> publish -> PUBACK; the hub's packets are read by poll() and
# handed to the app's handlers in order.
#
# Failure model (what can go wrong, what the session does; each path is tested):
#   Wi-Fi lost       network_ok() turns false: the connection is dropped, net() is asked to bring
#                    the radio back on every attempt, attempts back off.
#   broker lost      EOF or error on read/write, a packet stalled mid-way for `io_timeout` s,
#                    or nothing heard for 1.5 x keep-alive: close, back off (exponential, jittered,
#                    capped), reconnect, resubscribe, re-send every message not yet PUBACKed.
#   dropped at once  a connection that ends within `stable_after` s (a clone of this device took
#                    over the identity, a hub that closes on sight) does not reset the backoff: it
#                    grows like any other failure, and the log says how long the connection lasted.
#   TLS failure      server not signed by the pinned roots, wrong hostname, expired, not TLS,
#                    TLS < 1.2: refused before CONNECT, the token never leaves the device. Only a
#                    verification failure counts against the root set (iothub.roots); back off.
#   no memory        a handshake (or CONNECT) the heap cannot hold counts neither against the roots
#                    nor as a hub failure; `memory_resets_after` such attempts in a row reset the
#                    board cleanly (a fresh heap) instead of staying offline.
#   token expired    never waited for: at expiry - margin the session disconnects cleanly and
#                    reconnects with a fresh token, queue intact.
#   clock unset      minting refuses (clock.require_set); set_clock() is asked, back off.
#   CONNECT refused  CONNACK 4/5 (bad credentials, disabled or unknown device): logged once,
#                    retried every `refused_retry` s (slow, never a hot loop); the clock is re-read.
#   hostile input    a packet larger than IoT Hub sends on its topic, or than the heap can hold, is
#                    skipped without being allocated (acknowledged if QoS 1, so it is not sent
#                    again), logged and counted (`inboundDropped` reported); a topic that does not
#                    parse is ignored and logged. Nothing the hub sends ends the connection unless
#                    it is not MQTT.
# Logs never contain the device key or the token.
import gc
import json
import time

from iothub import clock, topics, transport, wire
from iothub.backoff import Backoff
from iothub.transport import why as _why

_REFUSED = {1: "protocol version", 2: "client id rejected", 3: "server unavailable",
            4: "bad user name or password", 5: "not authorized"}
DAY_MS = 86400 * 1000
_HEALTH_EVERY_MS = 60000  # inboundDropped is reported at most this often


def _log(msg):
    print("iothub:", msg)


def _reset():
    try:
        import machine

        machine.reset()
    except (ImportError, AttributeError):
        raise SystemExit(0)


class Session:
    def __init__(self, cfg, secrets, root="", log=_log, net=None, network_ok=None, set_clock=None,
                 reset=None, roots=None):
        # cfg: checked by iothub.config (every setting present). net() brings the network up
        # (raises when it cannot); network_ok() says whether it is up; set_clock() sets the
        # clock (NTP); reset() restarts the board.
        self.cfg = cfg
        self.device_id = cfg["device_id"]
        self.hostname = cfg["hostname"]
        self._key = secrets.get("device_key") if secrets else None
        self.root = root.rstrip("/")
        self.log = log
        self.net = net
        self.network_ok = network_ok
        self.set_clock = set_clock
        self.reset = reset or _reset
        if roots is None:
            from iothub.roots import Roots

            roots = Roots(self.root + "/" + cfg["certs_dir"], cfg["roots_expiry_warn_days"], log)
        self.roots = roots
        # Application hooks.
        self.on_c2d = None  # f(body: bytearray, properties: dict)
        self.on_desired = None  # f(desired: dict, version: int), full twin or patch, in $version order
        self.on_twin = None  # f(twin: dict) after get_twin()
        self.on_method = None  # f(name, payload) -> (status, payload); updateRootCerts is the library's
        self.connected = False
        self.refused = None  # CONNACK code while the hub refuses us
        self.connects = 0
        self.dropped = 0  # telemetry dropped from a full queue
        self.inbound_dropped = 0  # messages from the hub skipped (too large, no memory, unreadable)
        self._queue = []  # [topic, body, pid]: not yet PUBACKed (pid 0: not sent on this connection)
        self._c = None
        ttl = cfg["token_ttl"]
        self._margin = min(120, max(2, ttl // 5))
        self._backoff = Backoff(1000, cfg["retry_cap"] * 1000)
        self._next_try = time.ticks_ms()
        self._renew_at = None
        self._up_at = 0
        self._stable = False
        self._subscribed = False
        self._sub_pid = 0
        self._mem_failures = 0
        self._last_tx = self._last_rx = 0
        self._desired_version = -1
        self._twin_rid = None
        self._roots_due = None
        self._health = [0, 0]  # [inbound_dropped last reported, when]
        try:
            roots.report()  # described now, while no TLS session holds the heap (kept as text)
        except MemoryError:
            pass

    # ---- application API

    def send(self, body, properties=None, content_type="application/json", encoding="utf-8"):
        # Telemetry, QoS 1: queued, sent by poll(), kept until PUBACKed (re-sent after a reconnect).
        if not isinstance(body, (str, bytes, bytearray)):
            body = json.dumps(body)
        self._add(topics.telemetry(self.device_id, properties, content_type, encoding), body)

    def report(self, patch):
        # Twin reported-properties patch (a dict, or its JSON text); the hub answers 204.
        self._add(topics.twin_reported(topics.next_rid()), patch if isinstance(patch, str) else json.dumps(patch))

    def get_twin(self):
        # The full twin arrives on on_twin (and its desired part on on_desired).
        if self.connected and self._subscribed:
            self._twin_rid = topics.next_rid()
            self._c.publish(topics.twin_get(self._twin_rid), b"")
            self._last_tx = time.ticks_ms()

    def pending(self):
        return len(self._queue)

    def poll(self, wait_ms=0):
        # One step: (re)connect when due, renew, send queued messages, ping, read for up to wait_ms.
        if not self.connected:
            left = time.ticks_diff(self._next_try, time.ticks_ms())
            if left > 0:
                time.sleep_ms(min(wait_ms, left))
                return False
            try:
                self._connect()
            except Exception as e:  # a write right after CONNACK hit a dead socket
                self._lost(e)
            if not self.connected:
                return False
        try:
            if self.network_ok is not None and not self.network_ok():
                raise OSError("network down")
            now = time.ticks_ms()
            if not self._stable and time.ticks_diff(now, self._up_at) >= self.cfg["stable_after"] * 1000:
                self._stable = True
                self._backoff.reset()  # only a connection that stayed up earns a fast retry
            if self._renew_at is not None and clock.now() >= self._renew_at:
                self.log("renewing token before it expires")
                self._close(True)
                self._connect()
                if not self.connected:
                    return False
            if self._subscribed:
                self._duties(now)
            self._flush()
            self._keepalive()
            self._read(wait_ms)
        except Exception as e:  # every transport failure ends here; app handlers are guarded
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
        exp = t + self.cfg["token_ttl"]
        from iothub import sas

        try:
            return sas.device_token(self.hostname, self.device_id, self._key, expiry=exp), exp
        finally:  # needed once an hour: its ~4 KB of code are off the heap for the TLS handshake
            sas = None
            transport._unload("sas", "crypto")

    def _credentials(self):
        # -> (password, expiry, cert, key), or None after logging why there are none.
        if self.cfg["auth"] == "x509":
            x = self.cfg["x509"]
            try:
                return "", None, self._file(x["cert"]), self._file(x["key"])
            except (OSError, ValueError) as e:
                self.log("x509 certificate or key unusable on flash: %s" % _why(e))
                return None
        try:
            password, expiry = self._password()
            return password, expiry, None, None
        except ValueError as e:
            self.log("cannot mint a token: %s" % e)
            if self.set_clock is not None:
                try:
                    self.set_clock()
                except Exception as e2:
                    self.log("setting the clock failed: %s" % (str(e2) or _why(e2)))
            return None

    def _connect(self):
        if self.net is not None:
            try:
                self.net()
            except Exception as e:
                self.log("network unavailable: %s" % getattr(e, "reason", _why(e)))
                self._retry()
                return
        try:
            cred = self._credentials()
            if cred is None:
                self._retry()
                return
            att = self.roots.attempt()  # the root set is chosen here, before any socket exists
        except MemoryError:
            self._no_memory("not enough memory to prepare the connection")
            return
        except ValueError as e:  # no valid roots on flash
            self.log("cannot connect: %s" % e)
            self._retry()
            return
        password, expiry, cert, key = cred
        cred = None
        addr = self.cfg["gateway"] or self.hostname
        try:
            from iothub import mqtt  # the umqtt adapter: loaded only to connect
        except MemoryError:
            att.done("untried")
            self._no_memory("not enough memory to load umqtt")
            return
        try:
            sock, raw = mqtt.connect(self.device_id, addr, self.cfg["port"],
                                     topics.username(self.hostname, self.device_id), password,
                                     self.cfg["keepalive"],
                                     transport.params(self.hostname, att.data, cert, key, self.cfg["io_timeout"]))
        except transport.TLSError as e:
            att.done("verify" if e.kind == "verify" else "untried")
            if e.kind == "memory":
                self._no_memory(str(e))
            else:
                self.log("TLS refused: %s" % e)
                self._retry()
            return
        except mqtt.Refused as e:
            att.done("ok")
            self._refused(e.code, expiry)
            return
        except MemoryError:
            att.done("untried")
            self._no_memory("not enough memory to connect")
            return
        except mqtt.Failed as e:
            att.done("ok" if e.tls else "untried")
            if e.memory:
                self._no_memory("not enough memory to connect")
            else:
                self.log("connect failed: %s" % e)
                self._retry()
            return
        finally:
            password = mqtt = None
            transport._unload("mqtt", "umqtt.simple")
        att.done("ok")
        att = None
        c = wire.Conn(sock, raw, self.cfg["io_timeout"] * 1000)
        self._c = c
        self.connected = True
        self.refused = None
        self.connects += 1
        self._mem_failures = 0
        now = time.ticks_ms()
        self._up_at = self._last_tx = self._last_rx = now
        self._stable = False
        self._subscribed = False
        for m in self._queue:  # not acknowledged on the last connection: sent again
            m[2] = 0
        if expiry is None:
            self._renew_at = None  # certificates are not renewed by reconnecting
            self.log("connected to %s as %s (x509)" % (self.hostname, self.device_id))
        else:
            self._renew_at = expiry - self._margin
            self.log("connected to %s as %s (token valid %d s)" % (self.hostname, self.device_id, expiry - clock.now()))
        self._sub_pid = c.next_pid()
        c.subscribe(self._sub_pid, topics.subscriptions(self.device_id))  # one round trip for all four

    def _refused(self, code, expiry):
        if code in (4, 5):
            if self.refused != code:
                self.log("CONNECT refused by the hub: %s (CONNACK %d); retrying every %d s"
                         % (_REFUSED[code], code, self.cfg["refused_retry"]))
            self.refused = code
            if self.set_clock is not None and expiry is not None:
                try:  # a drifted clock makes tokens the hub calls expired: re-read the time
                    self.set_clock()
                except Exception:
                    pass
            self._next_try = time.ticks_add(time.ticks_ms(), self.cfg["refused_retry"] * 1000)
            return
        self.log("CONNECT refused: %s (CONNACK %d)" % (_REFUSED.get(code, "?"), code))
        self._retry()

    def _no_memory(self, why):
        self._mem_failures += 1
        gc.collect()
        n = self.cfg["memory_resets_after"]
        self.log("%s (%d in a row; free heap %d)" % (why, self._mem_failures, gc.mem_free()))
        if self._mem_failures >= n:
            self.log("resetting the board: %d connection attempts in a row failed for lack of memory" % n)
            self.reset()
        self._retry()

    def _file(self, name):
        import os

        path = self.root + "/" + name
        if os.stat(path)[6] > 8192:
            raise ValueError("%s is larger than 8192 bytes" % name)
        with open(path, "rb") as f:
            return f.read()

    def _close(self, graceful):
        c = self._c
        self._c = None
        self.connected = False
        self._subscribed = False
        if c is not None:
            c.close(graceful)

    def _lost(self, e):
        up = time.ticks_diff(time.ticks_ms(), self._up_at) // 1000
        if self._c is not None and not self._stable and isinstance(e, wire.Closed):
            self.log("connection lost: %s %d s after connecting (when this repeats: another device is "
                     "using this identity, or the hub refuses what it was sent)" % (_why(e), up))
        else:
            self.log("connection lost: %s" % _why(e))
        self._close(False)
        self._retry()

    # ---- after the subscriptions: what the library reports on its own

    def _subscribed_now(self):
        self._subscribed = True
        self.get_twin()  # resync desired properties missed while away ($version order drops stale ones)
        try:
            self.report('{"rootCerts":' + self.roots.report() + "}")
        except MemoryError:
            self.log("not enough memory to report rootCerts now")
        self._roots_due = time.ticks_add(time.ticks_ms(), 0 if self.roots.expiring else DAY_MS)
        if self.inbound_dropped:
            self._health[1] = time.ticks_add(time.ticks_ms(), -_HEALTH_EVERY_MS)
            self._health[0] = -1

    def _duties(self, now):
        # Daily: the roots' expiry (an alert as telemetry while one is close). When changed: counters.
        if self._roots_due is not None and time.ticks_diff(now, self._roots_due) >= 0:
            self._roots_due = time.ticks_add(now, DAY_MS)
            try:
                self.roots.refresh()
                rc = self.roots.report()
                if self.roots.expiring:
                    self.send({"rootCertsExpiring": self.roots.expiring, "warnDays": self.roots.warn_days},
                              {"alert": "rootCertsExpiring"})
                    self.log("root certificates expire within %d days: alert sent" % self.roots.warn_days)
                self.report('{"rootCerts":' + rc + "}")
            except MemoryError:
                self._roots_due = time.ticks_add(now, 60000)
        h = self._health
        if h[0] != self.inbound_dropped and time.ticks_diff(now, h[1]) >= _HEALTH_EVERY_MS:
            h[0] = self.inbound_dropped
            h[1] = now
            self.report({"inboundDropped": self.inbound_dropped})

    # ---- traffic

    def _add(self, topic, body):
        q = self._queue
        if len(q) >= self.cfg["queue_len"]:
            q.pop(0)
            self.dropped += 1
            if self.dropped % 10 == 1:  # not a line per message during a long outage
                self.log("queue full: dropped the oldest message (%d so far)" % self.dropped)
        q.append([topic, body, 0])

    def _flush(self):
        # One message in flight: the next goes once the hub has acknowledged the one before.
        q = self._queue
        if q and self.connected and q[0][2] == 0:
            m = q[0]
            pid = self._c.next_pid()
            self._c.publish(m[0], m[1], 1, pid, dup=False)
            m[2] = pid
            self._last_tx = time.ticks_ms()

    def _keepalive(self):
        ka = self.cfg["keepalive"] * 1000
        now = time.ticks_ms()
        if time.ticks_diff(now, self._last_rx) > ka + ka // 2:
            raise OSError(110, "no answer from the hub for 1.5 x keep-alive")
        if time.ticks_diff(now, self._last_tx) >= ka // 2:
            self._c.ping()
            self._last_tx = now

    def _read(self, wait_ms):
        ka = self.cfg["keepalive"] * 500
        wait = wait_ms if wait_ms < ka else ka
        for _ in range(16):  # bounded: let the app run between bursts
            first = self._c.poll(wait)
            if first is None:
                return
            p = self._c.read(first, self.device_id)
            self._last_rx = time.ticks_ms()
            kind = p[0]
            if kind == wire.PUBLISH:
                self._inbound(p[1], p[2], p[3], p[4], p[5])
            elif kind == wire.PUBACK:
                q = self._queue
                if q and q[0][2] == p[1]:
                    q.pop(0)
                    self._flush()  # the next one goes at once
            elif kind == wire.SUBACK and p[1] == self._sub_pid and not self._subscribed:
                if 0x80 in p[2]:
                    self.log("the hub refused a subscription (return codes %s)" % list(p[2]))
                self._subscribed_now()
            if not self.connected:
                return
            wait = 0

    def _skipped(self, what, size, why):
        self.inbound_dropped += 1
        self.log("%s of %d bytes dropped: %s (%d dropped so far)" % (
            what, size, "larger than IoT Hub sends" if why == "too large" else
            "not enough free memory" if why == "no memory" else why, self.inbound_dropped))

    def _inbound(self, topic, pid, body, size, why):
        t = topics.parse(topic, self.device_id)
        kind = t[0] if t else None
        if t is None:
            self._skipped("a message on an unreadable or foreign topic %r" % bytes(topic[:48]), size, "ignored")
        elif body is None:
            if kind == "method":  # the caller gets an answer now rather than a timeout
                self._answer(413, {"error": "payload of %d bytes dropped by the device: %s" % (size, why)}, t[2])
            self._skipped(kind + " message", size, why)
        elif kind == "c2d":
            self._call(self.on_c2d, body, t[1])
        elif kind == "method":
            self._method(t[1], t[2], body)
        elif kind == "desired":
            doc = self._json(body, "desired properties", size)
            body = None
            if doc is not None:
                self._desired(doc, t[1])
        elif kind == "twin":
            self._twin_reply(t[1], t[2], body, size)
        if pid:  # QoS 1 (C2D): acknowledged once handled, or dropped for good
            self._c.puback(pid)
            self._last_tx = time.ticks_ms()

    def _json(self, body, what, size):
        try:
            return json.loads(body) if body else None
        except MemoryError:
            body = None
            gc.collect()
            self._skipped(what, size, "no memory")
        except ValueError:
            self.log("%s are not JSON: ignored" % what)
        return None

    def _twin_reply(self, status, rid, body, size):
        if rid is not None and rid == self._twin_rid:
            self._twin_rid = None
            if status != 200:
                self.log("twin GET answered %d" % status)
                return
            doc = self._json(body, "twin document", size)
            body = None
            if isinstance(doc, dict):
                self._call(self.on_twin, doc)
                d = doc.get("desired")
                if isinstance(d, dict):
                    self._desired(d, d.get("$version"))
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

    def _method(self, name, rid, body):
        payload = self._json(body, "method %s payload" % name, len(body))
        body = None
        if name == "updateRootCerts":  # the library's own: root rotation over the air
            status, out = self.roots.update(payload)
            self.report('{"rootCerts":' + self.roots.report() + "}")
        elif self.on_method is None:
            status, out = 404, {"error": "no method " + name}
        else:
            try:
                r = self.on_method(name, payload)
                status, out = r[0], r[1]
            except Exception as e:
                status, out = 500, {"error": "method failed: %s" % type(e).__name__}
                self.log("method %s failed: %s" % (name, _why(e)))
        self._answer(status, out, rid)

    def _answer(self, status, payload, rid):
        self._c.publish(topics.method_response(status, rid), json.dumps(payload))
        self._last_tx = time.ticks_ms()

    def _call(self, f, *args):
        if f is None:
            return
        try:
            f(*args)
        except Exception as e:  # an app bug must not tear the connection down
            self.log("handler failed: %s" % _why(e))
