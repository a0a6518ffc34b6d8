# Sample application: a reading of the board's sensor as telemetry every `telemetry_interval`
# seconds (a desired twin property it follows within the configured bounds and reports back) and
# the direct methods `ping` and `reboot` ({"delay": s}: acknowledged, then the board resets).
# Root rotation, `rootCerts`, renewal and reconnects are the session's (lib/iothub), not the app's.
import gc
import json
import time

REBOOT_DELAY_S = 1
REBOOT_DELAY_MAX_S = 300


def run(s, board, cfg):
    st = {"interval": cfg["telemetry_interval"], "reboot_at": None}
    lo, hi = cfg["telemetry_interval_min"], cfg["telemetry_interval_max"]

    def on_desired(desired, version):
        v = desired.get("telemetry_interval")
        if v is None and "telemetryInterval" in desired:
            v = desired["telemetryInterval"]
            print("app: desired telemetryInterval is the old name of telemetry_interval: used, please rename it")
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            print("app: desired telemetry_interval %r refused (allowed: %s to %s s)" % (v, lo, hi))
            s.report({"telemetry_interval": {"value": st["interval"], "refused": v, "min": lo, "max": hi}})
            return
        st["interval"] = v
        print("app: telemetry every %s s (desired $version %s)" % (v, version))
        s.report({"telemetry_interval": v})

    def on_method(name, payload):
        if name == "ping":
            return 200, {"pong": payload, "device": s.device_id}
        if name == "reboot":
            d = payload.get("delay", REBOOT_DELAY_S) if isinstance(payload, dict) else REBOOT_DELAY_S
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= REBOOT_DELAY_MAX_S:
                return 400, {"error": "delay must be a number of seconds from 0 to %d" % REBOOT_DELAY_MAX_S}
            st["reboot_at"] = time.ticks_add(time.ticks_ms(), int(d * 1000))
            print("app: rebooting in %s s" % d)
            return 200, {"rebooting_in_ms": int(d * 1000)}
        return 404, {"error": "no method " + name}

    def on_c2d(body, props):
        head = bytes(body[:80])  # a 64 KB body is not printed whole
        try:
            text = head.decode()
        except UnicodeError:
            text = repr(head)
        print("app: c2d %s%s %s" % (text, "... (%d bytes)" % len(body) if len(body) > 80 else "", json.dumps(props)))

    s.on_desired = on_desired
    s.on_method = on_method
    s.on_c2d = on_c2d
    s.report({"telemetry_interval": st["interval"], "board": board.NAME})
    dog = board.watchdog(120000)
    seq = 0
    due = time.ticks_ms()
    while True:
        dog.feed()
        now = time.ticks_ms()
        if time.ticks_diff(now, due) >= 0:
            seq += 1
            t = board.read_sensor()
            try:
                mid = s.send('{"temperature":%.2f,"seq":%d}' % (t, seq), {"sensor": "temperature", "seq": seq})
                gc.collect()  # a small collection per beat keeps the heap from fragmenting
                print("app: telemetry %d queued as %s (%.2f C, heap %d used)" % (seq, mid, t, gc.mem_alloc()))
            except Exception as e:  # outbox full (refuse policy) or the flash failed: this reading is lost
                print("app: telemetry %d not recorded: %s" % (seq, e))
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
