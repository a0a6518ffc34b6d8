"""upyhub sim: run the firmware on the unix port with a folder as the board's flash."""
import pathlib
import signal

from upyhub import sim
from upyhub.errors import UsageError


def register(sub):
    p = sub.add_parser("sim", help="run the device firmware on the unix port (a folder is its flash) or an emulated Pico",
                       description="Run boot.py + main.py on the MicroPython unix port with DIR as the flash, "
                                   "confined to it (the first line says how). With --device and a flash folder "
                                   "that holds no config.json yet, the device is registered on the running local "
                                   "hub (--hub) and its flash folder written first. A board reset boots it again; "
                                   "Ctrl-C stops it. --board rp2: the rp2 image (build/rp2) on an emulated "
                                   "Raspberry Pi Pico whose flash is the file FILE and whose network is a PPP "
                                   "modem reaching only the local hub; --device provisions it through its serial "
                                   "port with `upyhub provision`, then its console is shown (mpremote can use the "
                                   "port it prints).")
    p.add_argument("--board", choices=("unix", "rp2"), default="unix",
                   help="unix (default): the unix port, a folder as flash; rp2: the emulated Pico, a file as flash")
    p.add_argument("--flash", required=True, metavar="DIR|FILE",
                   help="the board's flash folder (unix) or flash image file (rp2: made on first use)")
    p.add_argument("--link", metavar="PATH", help="rp2: a symlink to the board's serial port")
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
    if args.board == "rp2":
        if args.heapsize or args.source or args.unconfined or args.telemetry_interval is not None:
            raise UsageError("--heapsize, --source, --unconfined and --telemetry-interval are for the unix board "
                             "(the rp2 image has its own heap and frozen firmware; set the interval on the twin)")
        flash = pathlib.Path(args.flash)
        from upyhub import pico

        if flash.is_symlink() or (flash.exists() and not flash.is_file()):
            raise UsageError("--board rp2: %s is not a flash image file" % flash)
        if flash.exists() and flash.stat().st_size != pico.FLASH_SIZE:
            raise UsageError("--board rp2: %s is %d bytes, not a Pico's %d-byte flash image"
                             % (flash, flash.stat().st_size, pico.FLASH_SIZE))
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            return sim.run_pico(flash, device_id=args.device, hub_data=args.hub, link=args.link)
        except KeyboardInterrupt:
            print("sim: stopped")
            return 0
    if args.link:
        raise UsageError("--link is for --board rp2 (the unix board has no serial port: see `upyhub sim-board`)")
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
