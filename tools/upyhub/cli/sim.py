"""upyhub sim: run the firmware on the unix port with a folder as the board's flash."""
import pathlib
import signal

from upyhub import sim
from upyhub.errors import UsageError


def register(sub):
    p = sub.add_parser("sim", help="run the device firmware on the unix port (a folder is its flash)",
                       description="Run boot.py + main.py on the MicroPython unix port with DIR as the flash, "
                                   "confined to it (the first line says how). With --device and a flash folder "
                                   "that holds no config.json yet, the device is registered on the running local "
                                   "hub (--hub) and its flash folder written first. A board reset boots it again; "
                                   "Ctrl-C stops it.")
    p.add_argument("--flash", required=True, metavar="DIR", help="the board's flash folder")
    p.add_argument("--device", metavar="ID", help="device id (provisions DIR from the local hub when it is empty)")
    p.add_argument("--hub", default=".upyhub", metavar="DATA", help="local hub data folder (default .upyhub)")
    p.add_argument("--telemetry-interval", type=float, default=None, metavar="S",
                   help="seconds between readings when provisioning (default 10)")
    p.add_argument("--heapsize", default=None, help="MicroPython heap (e.g. 128K; default: the port's)")
    p.add_argument("--source", action="store_true", help="run the checkout's .py files instead of build/mpy")
    p.add_argument("--unconfined", action="store_true",
                   help="run without the kernel sandbox, where the kernel lacks Landlock (trusted code only)")
    p.set_defaults(func=run)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops the board as cleanly as Ctrl-C


def run(args):
    flash = pathlib.Path(args.flash)
    cfg = sim.read_config(flash) if flash.is_dir() else None
    if cfg is not None:
        if args.device and cfg.get("device_id") != args.device:
            raise UsageError("%s is provisioned for device %r, not %r" % (flash, cfg.get("device_id"), args.device))
    elif args.device:
        settings = {}
        if args.telemetry_interval is not None:
            if not 0 < args.telemetry_interval <= 86400:
                raise UsageError("--telemetry-interval must be above 0 and at most 86400 seconds")
            settings["telemetry_interval"] = args.telemetry_interval
        sim.provision_local(flash, args.device, args.hub, **settings)
        print("sim: provisioned %s for device %s" % (flash, args.device))
    else:
        raise UsageError("%s holds no config.json: give --device ID to provision it from the local hub" % flash)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return sim.run(flash, heapsize=args.heapsize, source=args.source, confine=not args.unconfined)
    except KeyboardInterrupt:
        print("sim: stopped")
        return 0
