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
#   power lost       telemetry is on flash (iothub.outbox) before send() returns; after a reset what
#                    was not acknowledged is sent again, in order, before anything newer ($.mid
#                    tells duplicates apart). Up to `inflight` messages are in flight at once.
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
_REREGISTER_AFTER = 3  # CONNACK 5 in a row before a DPS device registers again


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
        self.device_id = cfg.get("device_id")  # None until DPS assigns one (cfg["dps"])
        self.hostname = cfg.get("hostname")
        self._key = (secrets or {}).get("token_secret" if cfg["auth"] == "token-service" else "device_key")
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
        self.inbound_dropped = 0  # messages from the hub skipped (too large, no memory, unreadable)
        self.outbox = None
        self.outbox_problem = None  # why telemetry is kept in RAM although config.json asks for flash (reported)
        if cfg["outbox"] == "flash":
            from iothub.outbox import Outbox

            try:
                ob = Outbox(self.root + "/" + cfg["outbox_dir"], cfg["outbox_kb"] * 1024, full=cfg["outbox_full"],
                            ack_every=cfg["inflight"], log=log)
                if ob.room is None or ob.room >= ob.max_bytes:
                    self.outbox = ob
                else:  # what it holds stays on flash for a boot with room (nothing is open yet: no write)
                    self.outbox_problem = "outbox_kb is %d KB, more than the flash has for it (%d KB free)" % (
                        cfg["outbox_kb"], ob.room // 1024)
            except OSError as e:
                self.outbox_problem = "the flash cannot hold it (%s)" % _why(e)
            ob = None
            if self.outbox_problem:  # a read-only or full flash: the device still works, not durably
                log("outbox: %s: telemetry is kept in RAM only" % self.outbox_problem)
        if self.outbox is None:
            from iothub.outboxram import RamOutbox

            self.outbox = RamOutbox(cfg["outbox_kb"] * 1024, full=cfg["outbox_full"], log=log)
        self._reports = []  # [topic, body, pid]: reported patches not yet PUBACKed (RAM: the app reports again at boot)
        self._inflight = []  # [pid, outbox ref (None: a report), acknowledged] in the order they were sent
        self._dup = 0  # messages to flag DUP: those that were in flight when the connection was lost
        import binascii
        import os

        self._boot = binascii.hexlify(os.urandom(4)).decode()  # $.mid = <boot>-<n>: unique across resets
        self._mid = 0
        self._c = None
        self._state = {"root": self.root}  # kept between connection attempts (iothub.connect)
        self._refusals = 0
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
        self._health = [0, time.ticks_add(time.ticks_ms(), -_HEALTH_EVERY_MS)]  # [inbound_dropped reported, when]
        try:
            roots.report()  # described now, while no TLS session holds the heap (kept as text)
            self._prime()
        except MemoryError:
            pass

    def _prime(self):
        # The TLS context gets the roots now rather than at the first handshake: where mbed TLS parses
        # them on the Python heap (rp2), the room for the session's buffers is then taken while the
        # heap is still in one piece (transport). X.509 devices add their certificate at connect.
        data = self.roots.active_data() if self.cfg["auth"] != "x509" else None
        if data is None:
            return
        from iothub import handshake

        try:
            handshake.context(data)
        finally:
            handshake = data = None
            transport._unload("handshake")
        transport.keep_room()

    # ---- application API

    def send(self, body, properties=None, content_type="application/json", encoding="utf-8"):
        # Telemetry, QoS 1: recorded in the outbox (on flash unless config says "ram") before this
        # returns, published by poll(), kept until PUBACKed. Returns its message id ($.mid).
        # Raises outbox.Full (outbox_full "refuse") or OSError (the flash failed: not recorded).
        if not isinstance(body, (str, bytes, bytearray)):
            body = json.dumps(body)
        self._mid += 1
        mid = "%s-%d" % (self._boot, self._mid)
        self.outbox.append(topics.telemetry_bag(properties, content_type, encoding, mid), body)
        return mid

    def report(self, patch):
        # Twin reported-properties patch (a dict, or its JSON text); the hub answers 204. In RAM.
        r = self._reports
        if len(r) >= 16:  # the oldest unsent report gives way (an app that reports in a loop)
            for i in range(len(r)):
                if r[i][2] == 0:
                    del r[i]
                    break
        r.append([topics.twin_reported(topics.next_rid()), patch if isinstance(patch, str) else json.dumps(patch), 0])

    def get_twin(self):
        # The full twin arrives on on_twin (and its desired part on on_desired).
        if self.connected and self._subscribed:
            self._twin_rid = topics.next_rid()
            self._c.publish(topics.twin_get(self._twin_rid), b"")
            self._last_tx = time.ticks_ms()

    def pending(self):
        # Messages not yet acknowledged by the hub (telemetry and reported patches).
        return self.outbox.depth + len(self._reports)

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
        # Disconnect cleanly (and record on flash what the hub acknowledged).
        self._close(True)
        self.outbox.close()

    # ---- connection

    def _retry(self):
        d = self._backoff.next_ms()
        self.log("retry in %d ms (attempt %d)" % (d, self._backoff.attempt))
        self._next_try = time.ticks_add(time.ticks_ms(), d)

    def _connect(self):
        try:
            from iothub import connect  # loaded only to connect (with sas, TLS and umqtt)
        except MemoryError:  # its code needs a block of the heap too: counted like any other step
            transport._unload("connect")
            self._no_memory("not enough memory to load the code that connects")
            return
        try:
            c, expiry, self._sub_pid = connect.dial(self.cfg, self._key, self.roots, self._state, self.net,
                                                    self.set_clock, self.log)
        except connect.Failure as f:
            if f.kind == "memory":
                self._no_memory(str(f))
            elif f.kind == "refused":
                self._refused(f.code, self.cfg["auth"] != "x509")
            else:
                self.log(str(f))
                self._retry()
            return
        except MemoryError:
            self._no_memory("not enough memory to connect")
            return
        finally:
            connect = None
            transport._unload("connect")
        self._c = c
        self.hostname, self.device_id = self.cfg["hostname"], self.cfg["device_id"]  # (DPS may have assigned them)
        self._refusals = 0
        self._events = topics.events(self.device_id).encode()
        self.connected = True
        self.refused = None
        self.connects += 1
        self._mem_failures = 0
        now = time.ticks_ms()
        self._up_at = self._last_tx = self._last_rx = now
        self._stable = False
        self._subscribed = False
        # Whatever was not acknowledged on the last connection is sent again, first, in order.
        self._dup = len(self._inflight)
        self._inflight = []
        self.outbox.rewind()
        for r in self._reports:
            r[2] = 0
        if expiry is None:
            self._renew_at = None  # certificates are not renewed by reconnecting
            self.log("connected to %s as %s (x509)" % (self.hostname, self.device_id))
        else:
            left = expiry - clock.now()  # (a token service decides how long its tokens last)
            self._renew_at = expiry - min(120, max(2, left // 5))
            self.log("connected to %s as %s (token valid %d s)" % (self.hostname, self.device_id, left))

    def _refused(self, code, sas):
        if code in (4, 5):
            if self.refused != code:
                self.log("CONNECT refused by the hub: %s (CONNACK %d); retrying every %d s"
                         % (_REFUSED[code], code, self.cfg["refused_retry"]))
            self.refused = code
            self._refusals += 1
            if self.cfg.get("dps") and self._refusals >= _REREGISTER_AFTER:
                # deleted from the hub, or moved to another: ask DPS again (with the usual backoff)
                self.log("the hub refused this device %d times in a row: registering with DPS again" % self._refusals)
                self._state["reprovision"] = True
                self._refusals = 0
                self._retry()
                return
            if self.set_clock is not None and sas:
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
        # the backlog this connection starts with, and what was dropped so far
        self.report({"inboundDropped": self.inbound_dropped, "outboxDropped": self.outbox.dropped,
                     "outboxDepth": self.outbox.depth, "outboxProblem": self.outbox_problem})
        self._health[0] = self.inbound_dropped + self.outbox.dropped

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
        drops = self.inbound_dropped + self.outbox.dropped
        if h[0] != drops and time.ticks_diff(now, h[1]) >= _HEALTH_EVERY_MS:
            h[0] = drops
            h[1] = now
            self.report({"inboundDropped": self.inbound_dropped, "outboxDropped": self.outbox.dropped,
                         "outboxDepth": self.outbox.depth})

    # ---- traffic

    def _flush(self):
        # Publish until `inflight` messages await their PUBACK: reported patches first, then telemetry.
        c = self._c
        window = self.cfg["inflight"]
        while self.connected and len(self._inflight) < window:
            r = None
            for x in self._reports:
                if x[2] == 0:
                    r = x
                    break
            if r is not None:
                ref, topic, body = None, r[0], r[1]
            else:
                m = self.outbox.next()
                if m is None:
                    return
                ref, topic, body = m[0], self._events + m[1], m[2]  # the outbox keeps the bag only
            pid = c.next_pid()
            c.publish(topic, body, 1, pid, dup=self._dup > 0)
            if self._dup:
                self._dup -= 1
            if r is not None:
                r[2] = pid
            self._inflight.append([pid, ref, False])
            self._last_tx = time.ticks_ms()

    def _acked(self, pid):
        # PUBACK: the outbox forgets messages in the order they were sent (a later PUBACK waits).
        for e in self._inflight:
            if e[0] == pid:
                e[2] = True
                break
        else:
            return
        while self._inflight and self._inflight[0][2]:
            pid, ref, _ = self._inflight.pop(0)
            if ref is None:
                for i in range(len(self._reports)):
                    if self._reports[i][2] == pid:
                        del self._reports[i]
                        break
            else:
                self.outbox.ack(ref)
        self._flush()

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
                self._acked(p[1])
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
        if name == "updateRootCerts":  # as it came: the store refuses an oversized request before parsing it
            payload = body or None
        else:
            payload = self._json(body, "method %s payload" % name, len(body))
        body = None
        if name == "updateRootCerts":  # the library's own: root rotation over the air
            status, out = self.roots.update(payload)
            self.report('{"rootCerts":' + self.roots.report() + "}")
        elif name == "reprovision" and self.cfg.get("dps"):  # the library's own: ask DPS again
            self._answer(200, {"status": "reprovisioning", "registrationId": self.cfg["dps"]["registration_id"]}, rid)
            self.log("reprovision asked by the cloud: registering with DPS again")
            self._state["reprovision"] = True
            self._close(True)
            self._next_try = time.ticks_ms()
            return
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
