# Board entry: check the configuration, bring the network and clock up, then run the sample
# app on an IoT Hub session. Source stays small: the work is in lib/ (.mpy).
import gc
import sys
import time

import board
from iothub import transport

transport.reserve()  # the TLS context first, while the heap is still in one piece


def _config(root):
    from iothub import config

    try:
        return config.load(root)
    except config.ConfigError as e:
        for p in e.problems:
            print("config:", p)
        print("main: not starting until the configuration is fixed")
        raise SystemExit(2)
    finally:  # only needed at boot: give its RAM back
        import iothub

        iothub.__dict__.pop("config", None)
        sys.modules.pop("iothub.config", None)


def _roots_status(store, warn_days):
    from iothub import rootupdate

    for p in store.problems:  # slots found torn or corrupt (and repaired) at load
        print("certs:", p)
    return rootupdate.report(store, warn_days), rootupdate.expiring(store, warn_days)


def start():
    root = board.flash_root()
    cfg, secrets = _config(root)
    certs = transport.lazy_roots(root, cfg["certs_dir"])
    # The `rootCerts` status needs the cert store's full code: read it before the session's
    # modules load, so this boot-time step does not add to the session's peak heap.
    roots = certs.use(lambda store: _roots_status(store, cfg["roots_expiry_warn_days"]))
    gc.collect()
    from iothub.session import Session

    wifi = cfg.get("wifi")
    wifi_pw = secrets.get("wifi_password") or ""

    def net():
        if wifi and not board.network_ok():
            board.connect_network(wifi["ssid"], wifi_pw)

    def set_clock():
        board.set_time(cfg["ntp"])

    try:
        net()
    except board.NetworkError as e:
        print("main: network:", e.reason)  # the session keeps trying with backoff
    try:
        set_clock()
    except board.TimeError as e:
        print("main: clock:", e)
    s = Session(cfg, secrets, certs, root=root, net=net, network_ok=board.network_ok, set_clock=set_clock)
    secrets = None
    s.report({"rootCerts": roots[0]})  # queued as JSON text: the dicts can go
    if roots[1]:
        s.send({"rootCertsExpiring": roots[1], "warnDays": cfg["roots_expiry_warn_days"]},
               {"alert": "rootCertsExpiring"})
    roots = None
    import app

    try:
        app.run(s, board, cfg)
    except Exception as e:  # never sit dead in the REPL: log, then start over
        print("main: crashed: %r; resetting in 5 s" % e)
        time.sleep(5)
        board.reset()


start()
