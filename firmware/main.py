# Board entry: check the configuration, bring the network and clock up, then run the app on an
# IoT Hub session. The app is any module `app` with run(session, board, cfg): firmware/app.py is
# the sample; the session (lib/iothub) does root rotation, renewal and reconnects for every app.
import gc
import time

import board
from iothub import transport

transport.reserve(getattr(board, "TLS_ROOM", None))  # TLS first, while the heap is still in one piece


def _config(root):
    from iothub import config

    try:
        return config.load(root)
    except config.ConfigError as e:
        for p in e.problems:
            print("config:", p)
    except MemoryError:
        print("config: not enough memory to read config.json and secrets.json")
    finally:  # only needed at boot (sas comes back to mint tokens): give their RAM back
        transport._unload("config", "sas", "crypto")
    print("main: not starting until the configuration is fixed")
    raise SystemExit(2)


def start():
    root = board.flash_root()
    cfg, secrets = _config(root)
    gc.collect()
    from iothub.session import Session

    wifi = cfg.get("wifi")
    ssid = wifi["ssid"] if wifi else None
    wifi_pw = secrets.get("wifi_password") or ""
    # A Wi-Fi board joins only with an SSID; a board whose link needs none (PPP) always brings it up.
    link = wifi or not getattr(board, "NEEDS_SSID", True)

    def net():
        if link and not board.network_ok():
            board.connect_network(ssid, wifi_pw)

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
    s = Session(cfg, secrets, root=root, net=net, network_ok=board.network_ok, set_clock=set_clock,
                reset=board.reset)
    secrets = None
    import app

    try:
        app.run(s, board, cfg)
    except Exception as e:  # never sit dead in the REPL: log, then start over
        print("main: the app crashed (%s: %s); resetting in 5 s" % (type(e).__name__, e))
        time.sleep(5)
        board.reset()


start()
