import importlib
import pkgutil
import sys

import upyhub.bench as pkg


def main(names):
    mods = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
    for name in names or mods:
        if name not in mods:
            print("upyhub bench: no benchmark %r (have: %s)" % (name, ", ".join(mods)), file=sys.stderr)
            return 2
        print("== bench %s" % name, flush=True)
        importlib.import_module("upyhub.bench." + name).run()
    return 0


sys.exit(main(sys.argv[1:]))
