"""The `upyhub` command line: one verb per module in this package.

Each module `upyhub.cli.<verb>` defines `register(subparsers)`, which adds its parser
and sets `func` (called with the parsed args, returns an exit status or None).
Verbs are thin: the work lives in the library modules of `upyhub`.

Exit statuses, the same for every verb:
    0  success
    1  a failure at run time (the hub is down or refused, the board does not answer, findings, ...)
    2  a usage error (bad option, missing or bad input file, bad device id, ...): nothing was done
  130  interrupted (Ctrl-C)
Errors are one line on stderr (`upyhub: error: ...`), never a traceback (UPYHUB_DEBUG=1 shows one).
`upyhub` alone, or a verb group alone (`upyhub certs`), prints its help.
"""
import argparse
import importlib
import json
import os
import pkgutil
import sys

from upyhub import __version__
from upyhub.errors import UpyhubError, UsageError

EPILOG = ("exit status: 0 success, 1 failure at run time (hub down or refusing, board not answering, findings), "
          "2 usage error (nothing was done), 130 interrupted")


class _ShowHelp(Exception):
    def __init__(self, parser):
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints usage + message; keep it one line
        verbs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if verbs and message == "the following arguments are required: %s" % (verbs[0].metavar or verbs[0].dest):
            raise _ShowHelp(self)  # a verb group with no verb: show what it offers
        raise UsageError(message)


def add_output(p, what="the result"):
    """-o/--output text|json (and --json): how a list/show verb prints."""
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="print %s as text (default) or as JSON" % what)
    p.add_argument("--json", dest="output", action="store_const", const="json", help="same as -o json")


def print_json(doc):
    print(json.dumps(doc, indent=2, sort_keys=True))


def build_parser():
    parser = _Parser(prog="upyhub", description="MicroPython boards on Azure IoT Hub, securely.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version="upyhub " + __version__,
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(__name__ + "." + mod.name).register(sub)
    return parser


def main(argv=None):
    parser = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        status = args.func(args)
        return 0 if status is None else status
    except _ShowHelp as exc:
        exc.parser.print_help()
        return 0
    except UpyhubError as exc:
        print("upyhub: error: %s" % exc, file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("upyhub: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # never a traceback for users; UPYHUB_DEBUG=1 shows it
        if os.environ.get("UPYHUB_DEBUG"):
            raise
        print("upyhub: internal error: %s (set UPYHUB_DEBUG=1 for details)" % type(exc).__name__, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
