"""upyhub audit PORT: inspect a board for key, credential, TLS, root and firmware problems."""
from upyhub import audit, build
from upyhub.cli import add_output


def register(sub):
    p = sub.add_parser("audit", help="inspect a board over mpremote; exit 1 on critical findings",
                       description="Scan every file on the board (any size, text or binary) and its configuration "
                                   "for hub credentials, keys in clear, WebREPL, disabled certificate checks and "
                                   "root certificate problems; print what was checked and what was found. "
                                   "Exit status 1 when a finding is critical.")
    p.add_argument("port", help="the board's serial port (or a sim-board's pty)")
    p.add_argument("--board", choices=sorted(build.BOARDS),
                   help="also check the firmware against this checkout's build for that board")
    add_output(p, "what was checked and the findings")
    p.add_argument("--timeout", type=int, default=120, help="seconds the board may take to answer (default 120)")
    p.set_defaults(func=run)


def run(args):
    result = audit.audit(args.port, board=args.board, timeout=args.timeout)
    if args.output == "json":
        print(audit.as_json(result.findings, result.checked))
    else:
        print(audit.report(result.findings, result.checked, args.port))
    return 1 if result.critical else 0
