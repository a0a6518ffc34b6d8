"""`make demo`: a local IoT hub and a simulated board running the real firmware against it.

Starts the local hub (build/demo/hub), registers a device, writes its flash folder
(build/demo/flash), runs boot.py + main.py from build/mpy on the unix port, and prints what the
device logs and what reaches the hub. After a few readings it changes the desired
`telemetry_interval` and calls the `ping` direct method, through the hub's service API.
Ctrl-C stops the device and the hub. `--messages N` stops by itself after N readings.
"""
import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from upyhub import paths, sim
from upyhub.errors import UpyhubError
from upyhub.hub.client import ServiceError

DEVICE = "demo-device-1"
DEMO = paths.BUILD / "demo"
_out = threading.Lock()


def say(who, text):
    with _out:
        print("%-6s| %s" % (who, text), flush=True)


_libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child between fork and exec only calls it
_DEMO_PID = os.getpid()


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM when the demo dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    if _libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        os._exit(70)
    if os.getppid() != _DEMO_PID:  # the demo died before the line above: do not run at all
        os._exit(71)


def start_hub(data):
    subprocess.run([sys.executable, "-m", "upyhub", "hub", "init", "--data", str(data)], check=True,
                   capture_output=True, timeout=120)
    proc = subprocess.Popen([sys.executable, "-m", "upyhub", "hub", "serve", "--data", str(data), "--bind",
                             "127.0.0.1", "--port", "0", "--https-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True, preexec_fn=_die_with_parent,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in proc.stdout:
        if line.startswith("mqtt_port="):
            break
        if line.strip():
            say("hub", line.rstrip())
    else:
        raise SystemExit("demo: the local hub did not start")
    threading.Thread(target=_pump, args=(proc, "hub"), daemon=True).start()
    return proc


def _pump(proc, who):
    for line in proc.stdout:
        say(who, line.rstrip())


def boot_device():
    dev = sim.start(DEMO / "flash", start_new_session=True, preexec_fn=_die_with_parent)
    threading.Thread(target=_pump, args=(dev, "device"), daemon=True).start()
    return dev


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops the demo as cleanly as Ctrl-C


def main(argv=None):
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=0, help="stop after this many readings reach the hub")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between readings (default 2)")
    args = ap.parse_args(argv)
    shutil.rmtree(DEMO, ignore_errors=True)  # a fresh hub and board every run
    hub = dev = None
    try:
        hub = start_hub(DEMO / "hub")
        cfg = sim.provision_local(DEMO / "flash", DEVICE, DEMO / "hub", telemetry_interval=args.interval)
        _, _, _, service, _ = sim.hub_info(DEMO / "hub")
        say("demo", "registered %s on %s; its flash folder is %s" % (DEVICE, cfg["hostname"], DEMO / "flash"))
        dev = boot_device()
        say("demo", "running the firmware (%s) on the MicroPython unix port; Ctrl-C stops"
            % sim.image(DEMO / "flash")[0])
        seen, since = 0, 0
        while True:
            if dev.poll() is not None:
                if dev.returncode != 0:
                    say("demo", "the device stopped (exit %d)" % dev.returncode)
                    return 1
                say("demo", "the board reset: booting it again")  # as a board does after machine.reset()
                dev = boot_device()
            try:
                batch = service.telemetry(DEVICE, since=since, wait=2)
            except (ServiceError, OSError) as e:  # the hub restarting, or a CA switch: say so, keep going
                say("demo", "service API: %s" % e)
                time.sleep(2)
                continue
            for m in batch:
                since = max(since, m["seq"])
                seen += 1
                say("hub", "telemetry from %s: %s  properties %s" % (m["deviceId"], m["body"],
                                                                        json.dumps(m["properties"])))
                if seen == 3:
                    say("demo", "service: set desired telemetry_interval = %g s" % (args.interval * 2))
                    service.update_twin(DEVICE, {"telemetry_interval": args.interval * 2})
                    status, payload = service.invoke_method(DEVICE, "ping", {"from": "demo"}, timeout=30)
                    say("demo", "service: direct method ping -> %d %s" % (status, json.dumps(payload)))
            if args.messages and seen >= args.messages:
                reported = service.get_twin(DEVICE)["properties"]["reported"]
                say("demo", "twin reported: %s" % json.dumps({k: v for k, v in reported.items()
                                                               if not k.startswith("$")}))
                return 0
    except KeyboardInterrupt:
        return 0
    except (ServiceError, UpyhubError, OSError) as e:
        say("demo", "stopping: %s" % e)
        return 1
    finally:
        sim.stop(dev, 30)
        sim.stop(hub, 30)
        time.sleep(0.2)  # let the pumps print the last lines
        with _out:
            print("demo: stopped (device and hub)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
