"""upyhub build: compile lib/, firmware/ and the board module to .mpy for a board."""
from upyhub import build, paths


def register(sub):
    p = sub.add_parser("build", help="compile the device tree (.mpy) for a board",
                       description="Compile lib/, firmware/ and the board module with mpy-cross into the tree a "
                                   "board's flash receives (boot.py and main.py stay source).")
    p.add_argument("--board", default="unix", choices=sorted(build.BOARDS),
                   help="the board to compile for (sets mpy-cross -march; default unix)")
    p.add_argument("--out", default=None, help="output folder (default build/mpy-BOARD; unix: build/mpy)")
    p.add_argument("--mip-index", metavar="DIR", default=None,
                   help="instead, write a mip package index holding umqtt.simple into DIR, for "
                        "`mpremote mip install --index DIR ./package.json` without network")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def run(args):
    if args.mip_index:
        out = build.mip_index(args.mip_index)
        if not args.quiet:
            print("wrote a mip index with umqtt.simple into %s" % out)
        return
    out = args.out or str(paths.BUILD / ("mpy" if args.board == "unix" else "mpy-" + args.board))
    build.build(args.board, out, quiet=args.quiet)
