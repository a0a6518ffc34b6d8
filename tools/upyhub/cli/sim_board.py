"""upyhub sim-board: a simulated MicroPython board on a pty, for mpremote and provisioning tests."""
from upyhub import simboard
from upyhub.errors import UsageError


def _size(text):
    units = {"k": 1024, "m": 1024 * 1024}
    try:
        if text[-1:].lower() in units:
            return int(text[:-1]) * units[text[-1].lower()]
        return int(text)
    except ValueError:
        raise UsageError("--size takes a number of bytes, optionally with K or M (got %r)" % text)


def register(sub):
    p = sub.add_parser("sim-board", help="run a simulated board (pty + raw REPL) on the unix port",
                       description="Open a pty that behaves like a MicroPython board's serial port "
                                   "(friendly/raw/raw-paste REPL, soft reset boots boot.py and main.py), "
                                   "running code on the unix port with FLASH as its filesystem root. "
                                   "Prints `port: PATH` first.")
    p.add_argument("--flash", required=True, metavar="DIR", help="folder that is the board's filesystem")
    p.add_argument("--size", default="0", help="flash size (e.g. 2M): writes past it fail with ENOSPC")
    p.add_argument("--heapsize", default=None, help="MicroPython heap size (e.g. 256K; default: the unix port's)")
    p.add_argument("--uid", default=None, help="machine.unique_id() in hex (default: derived from DIR)")
    p.add_argument("--link", default=None, metavar="PATH", help="also make PATH a symlink to the pty")
    p.add_argument("--unconfined", action="store_true",
                   help="run without the kernel sandbox (Landlock) when the kernel lacks it")
    p.add_argument("--verbose", "-v", action="store_true", help="log boots and resets to stderr")
    p.set_defaults(func=run)


def run(args):
    uid = args.uid
    if uid is not None:
        try:
            bytes.fromhex(uid)
        except ValueError:
            raise UsageError("--uid must be hex digits")
    simboard.serve(args.flash, link=args.link, verbose=args.verbose, size=_size(args.size),
                   heapsize=args.heapsize, uid=uid, confine=not args.unconfined)
