"""upyhub build: compile lib/, firmware/ and the board module to .mpy for a board."""
from upyhub import build, paths


def register(sub):
    p = sub.add_parser("build", help="compile the device tree (.mpy) for a board")
    p.add_argument("--board", default="unix", choices=sorted(build.BOARDS))
    p.add_argument("--out", default=None, help="output folder (default build/mpy-BOARD; unix: build/mpy)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args):
    out = args.out or str(paths.BUILD / ("mpy" if args.board == "unix" else "mpy-" + args.board))
    build.build(args.board, out, quiet=args.quiet)
