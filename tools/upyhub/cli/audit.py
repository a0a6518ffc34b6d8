"""upyhub audit PORT: inspect a board for key, credential, TLS, root and firmware problems."""
from upyhub import audit, build


def register(sub):
    p = sub.add_parser("audit", help="inspect a board over mpremote; exit 1 on critical findings")
    p.add_argument("port", help="the board's serial port (or a sim-board's pty)")
    p.add_argument("--board", choices=sorted(build.BOARDS),
                   help="also check the firmware against this checkout's build for that board")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--timeout", type=int, default=120)
    p.set_defaults(func=run)


def run(args):
    found = audit.audit(args.port, board=args.board, timeout=args.timeout)
    print(audit.as_json(found) if args.json else audit.report(found))
    return 1 if any(f.severity == "critical" for f in found) else 0
