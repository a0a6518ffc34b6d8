# Sample application: periodic telemetry of the board's sensor; twin desired telemetryInterval
# honoured and reported back; direct methods `ping`, `reboot` (acknowledged, then deferred) and
# `updateRootCerts` (root rotation over the air; `rootCerts` reported).
import gc
import json
import time

REBOOT_DELAY_MS = 1000


def run(s, board, cfg):
    st = {"interval": cfg["telemetry_interval"], "reboot_at": None}

    def on_desired(desired, version):
        v = desired.get("telemetryInterval")
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 86400:
            print("app: desired telemetryInterval %r refused" % (v,))
            s.report({"telemetryInterval": {"value": st["interval"], "refused": v}})
            return
        st["interval"] = v
        print("app: telemetry every %s s (desired $version %s)" % (v, version))
        s.report({"telemetryInterval": v})

    warn_days = cfg["roots_expiry_warn_days"]

    def update_roots(store, payload):
        from iothub import rootupdate

        r = rootupdate.handle(store, payload)
        return r[0], r[1], rootupdate.report(store, warn_days)

    def roots_status(store):
        from iothub import rootupdate

        return rootupdate.report(store, warn_days), rootupdate.expiring(store, warn_days)

    def roots_watch():
        # rootCerts again after a staged set was kept or dropped; a telemetry alert (daily) when
        # a pinned root is about to expire. The store is loaded only for this.
        try:
            rc, soon = s.certs.use(roots_status)
        except MemoryError:
            return
        if s.certs.changed:
            s.certs.changed = False
            s.report({"rootCerts": rc})
        if soon:
            s.send({"rootCertsExpiring": soon, "warnDays": warn_days}, {"alert": "rootCertsExpiring"})

    def on_method(name, payload):
        if name == "updateRootCerts":  # root rotation over the air (lib/iothub/rootupdate.py)
            status, body, rc = s.certs.use(lambda store: update_roots(store, payload))
            s.report({"rootCerts": rc})
            return status, body
        if name == "ping":
            return 200, {"pong": payload, "device": s.device_id}
        if name == "reboot":
            st["reboot_at"] = time.ticks_add(time.ticks_ms(), REBOOT_DELAY_MS)
            return 200, {"rebooting_in_ms": REBOOT_DELAY_MS}
        return 404, {"error": "no method " + name}

    def on_c2d(body, props):
        print("app: c2d %s %s" % (body.decode() if body else "", json.dumps(props)))

    s.on_desired = on_desired
    s.on_method = on_method
    s.on_c2d = on_c2d
    s.report({"telemetryInterval": st["interval"], "board": board.NAME})
    dog = board.watchdog(120000)
    seq = 0
    due = time.ticks_ms()
    connects = 0
    check_roots = time.ticks_add(due, 86400 * 1000)  # main checked the roots at boot; then daily
    while True:
        dog.feed()
        now = time.ticks_ms()
        if s.connected and (s.connects != connects and s.certs.changed or time.ticks_diff(now, check_roots) >= 0):
            connects = s.connects
            check_roots = time.ticks_add(now, 86400 * 1000)
            roots_watch()
        if time.ticks_diff(now, due) >= 0:
            seq += 1
            t = board.read_sensor()
            s.send('{"temperature":%.2f,"seq":%d}' % (t, seq), {"sensor": "temperature", "seq": seq})
            gc.collect()  # a small collection per beat keeps the heap from fragmenting
            print("app: telemetry %d queued (%.2f C, heap %d used)" % (seq, t, gc.mem_alloc()))
            due = time.ticks_add(due, int(st["interval"] * 1000))
            if time.ticks_diff(now, due) > 0:  # fell behind (offline): no burst, restart the beat
                due = time.ticks_add(now, int(st["interval"] * 1000))
        r = st["reboot_at"]
        # Reboot once the acknowledgement and queued telemetry are out (or 10 s later regardless).
        if r is not None and time.ticks_diff(now, r) >= 0 and (s.pending() == 0 or time.ticks_diff(now, r) > 10000):
            s.close()
            board.reset()
        wait = time.ticks_diff(due, time.ticks_ms())
        s.poll(wait if 0 < wait < 500 else (0 if wait <= 0 else 500))
