"""The `upyhub` command line: one verb per module in this package.

Each module `upyhub.cli.<verb>` defines `register(subparsers)`, which adds its parser
and sets `func` (called with the parsed args, returns an exit status or None).
Verbs are thin: the work lives in the library modules of `upyhub`.
"""
import argparse
import importlib
import os
import pkgutil
import sys

from upyhub import __version__
from upyhub.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints usage + message; keep it one line
        raise UsageError(message)


def build_parser():
    parser = _Parser(prog="upyhub", description="MicroPython boards on Azure IoT Hub, securely.")
    parser.add_argument("--version", action="version", version="upyhub " + __version__)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(__name__ + "." + mod.name).register(sub)
    return parser


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        status = args.func(args)
        return 0 if status is None else status
    except UsageError as exc:
        print("upyhub: error: %s" % exc, file=sys.stderr)
        return 2
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
