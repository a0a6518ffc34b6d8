"""Compile the device tree for a board: what a board's filesystem receives.

Layout of the output (mirrors a board's flash):
    boot.py, main.py          from firmware/ (stay .py: boards only run those as source)
    lib/iothub/*.mpy          the device package
    lib/app.mpy ...           other firmware modules
    lib/board.mpy             boards/<board>/board.py
    lib/umqtt/simple.mpy      umqtt.simple from its PyPI package (build/umqtt)
"""
import os
import pathlib
import shutil
import subprocess
import sys

from upyhub import paths
from upyhub.errors import UsageError

# mpy-cross -march for boards whose native emitters matter; bytecode runs anywhere.
BOARDS = {
    "unix": None,
    "esp32": "xtensawin",
    "rp2_pico_w": "armv6m",
    "rp2_pico_ppp": "armv6m",
}
SOURCE_ONLY = ("boot.py", "main.py")
# mpy-cross's optimisation level, chosen by measurement (`python -m upyhub.bench footprint`, README
# "Performance"): -O3 makes the tree 6% smaller (57.7 -> 54.0 KB) and the connected session's heap 1.2 KB
# (2%) smaller, but drops every line number from tracebacks; -O1/-O2 save 0.3% (the code has no assert).
# Kept at 0: line numbers are worth more than 3.6 KB of a board's flash.
OPT = 0


def sources(board):
    """(source path, destination relative path without suffix) for everything a board gets."""
    if board not in BOARDS:
        raise UsageError("unknown board %r (choose from %s)" % (board, ", ".join(BOARDS)))
    board_dir = paths.BOARDS / board
    items = []
    for src in sorted(paths.LIB.rglob("*.py")):
        items.append((src, pathlib.Path("lib") / src.relative_to(paths.LIB)))
    for src in sorted(paths.FIRMWARE.glob("*.py")):
        dest = src.name if src.name in SOURCE_ONLY else pathlib.Path("lib") / src.name
        items.append((src, pathlib.Path(dest)))
    board_py = board_dir / "board.py"
    if board_py.exists():
        items.append((board_py, pathlib.Path("lib/board.py")))
    umqtt = paths.UMQTT / "umqtt" / "simple.py"
    if not umqtt.exists():
        raise UsageError("umqtt.simple is missing: run `make setup` first")
    items.append((umqtt, pathlib.Path("lib/umqtt/simple.py")))
    return items


def mpy_cross(src, out, march=None, name=None, opt=OPT):
    """Compile src to out. name: the source name the .mpy carries (its path relative to the board's /lib,
    e.g. iothub/sas.py): tracebacks name that, and no host path leaks into a board's files."""
    cmd = [sys.executable, "-m", "mpy_cross", "-O%d" % opt, "-o", str(out), "-s", name or pathlib.Path(src).name]
    if march:
        cmd.append("-march=" + march)
    cmd.append(str(src))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise UsageError("mpy-cross failed on %s: %s" % (src, msg[-1] if msg else "unknown error"))


def manifest_files(board):
    """The files boards/<board>/manifest.py freezes from this repo, checked.

    A manifest is MicroPython's (tools/manifestfile.py): include/require/package/module/freeze.
    Paths with $(...) variables belong to MicroPython's own tree and are left to the port
    build; local includes (boards/manifest_common.py) are followed. Raises UsageError when a
    named file or folder is missing, or when a firmware module or the board module is not
    frozen. Returns [] for a board without a manifest (unix).
    """
    manifest = paths.BOARDS / board / "manifest.py"
    if not manifest.exists():
        return []
    named, problems, visited = [], [], set()

    # Relative paths are relative to the manifest being run: run() makes it the working
    # folder while it runs, as MicroPython's manifest tool does (includes too).
    def local(base_path, rel):
        if "$(" in base_path or "$(" in rel:
            return None
        return (pathlib.Path.cwd() / base_path / rel).resolve()

    def package(package_path, files=None, base_path=".", opt=None):
        root = local(base_path, package_path)
        if root is None:
            return
        if not root.is_dir():
            problems.append("package %s: no folder %s" % (package_path, root))
            return
        for f in (files or sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))):
            module(f, base_path=str(root))

    def module(module_path, base_path=".", opt=None):
        path = local(base_path, module_path)
        if path is None:
            return
        if not path.is_file():
            problems.append("module %s: no file %s" % (module_path, path))
        else:
            named.append(path)

    def freeze(path, script=None, opt=None):
        root = local(".", path)
        if root is None:
            return
        if script is not None:
            for f in ([script] if isinstance(script, str) else script):
                module(f, base_path=str(root))
        elif not root.is_dir():
            problems.append("freeze %s: no folder %s" % (path, root))
        else:
            named.extend(sorted(root.rglob("*.py")))

    def include(manifest_path, **kw):
        for m in ([manifest_path] if isinstance(manifest_path, str) else manifest_path):
            path = local(".", m)
            if path is None:  # MicroPython's own tree
                continue
            if path.is_dir():  # a folder means the manifest.py inside it
                path = path / "manifest.py"
            if not path.is_file():
                problems.append("include %s: not found" % m)
            elif path not in visited:  # each manifest once, as MicroPython does
                run(path)

    def ignore(*a, **kw):
        pass

    def run(path):
        visited.add(path.resolve())
        env = {"package": package, "module": module, "freeze": freeze, "include": include, "require": ignore,
               "metadata": ignore, "add_library": ignore, "options": type("Options", (), {})()}
        cwd = os.getcwd()
        try:
            os.chdir(path.parent)
            exec(compile(path.read_text(), str(path), "exec"), env)
        except UsageError:
            raise  # an included manifest's own report
        except Exception as exc:  # a manifest is code: report what broke, in one line
            raise UsageError("%s: %s: %s" % (_show(path), type(exc).__name__,
                                             str(exc).splitlines()[0] if str(exc) else ""))
        finally:
            os.chdir(cwd)

    run(manifest)
    wanted = [src for src, rel in sources(board) if rel.name not in SOURCE_ONLY and "umqtt" not in rel.parts]
    for src in wanted:
        if src.resolve() not in named:
            problems.append("%s is not frozen by the manifest" % _show(src))
    if problems:
        raise UsageError("%s: %s" % (_show(manifest), "; ".join(problems)))
    return named


def _show(path):
    try:
        return str(path.relative_to(paths.ROOT))
    except ValueError:
        return str(path)


def build(board, out, quiet=False):
    """Compile into a fresh temporary tree, then swap it in: never a half-built output."""
    frozen = manifest_files(board)
    out = pathlib.Path(out)
    tmp = out.with_name("%s.tmp-%d" % (out.name, os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    march = BOARDS[board] if board in BOARDS else None
    count = 0
    built = set()
    for src, rel in sources(board):
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel.name in SOURCE_ONLY and rel.parent == pathlib.Path("."):
            shutil.copyfile(src, dest)
        else:
            name = rel.relative_to("lib") if rel.parts[0] == "lib" else rel
            mpy_cross(src, dest.with_suffix(".mpy"), march, name.as_posix())
            built.add(src.resolve())
        count += 1
    for i, src in enumerate(p for p in frozen if p not in built):  # what only the manifest names
        check = tmp / ".manifest-check" / ("%d.mpy" % i)
        check.parent.mkdir(parents=True, exist_ok=True)
        mpy_cross(src, check, march, _show(src))
    shutil.rmtree(tmp / ".manifest-check", ignore_errors=True)
    old = out.with_name("%s.old-%d" % (out.name, os.getpid()))
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    if not quiet:
        print("built %d files for %s into %s" % (count, board, out))
        if frozen:
            print("manifest: boards/%s/manifest.py freezes %d files, all present and compiling" % (board, len(frozen)))
    return count


def frozen_tree(out):
    """The files a board whose firmware has the device package frozen in holds: boot.py and main.py (they
    stay files, as boards/manifest_common.py says) and an empty lib/. Returns out."""
    out = pathlib.Path(out)
    (out / "lib").mkdir(parents=True, exist_ok=True)
    for name in SOURCE_ONLY:
        shutil.copyfile(paths.FIRMWARE / name, out / name)
    return out


def mip_index(out):
    """A mip package index in folder `out` holding umqtt.simple (from build/umqtt), as .py and as .mpy.

    `mpremote mip install --index OUT ./package.json` then installs the device package and its
    umqtt.simple dependency from this checkout, with no network (micropython-lib's index is the
    default when a machine can reach it). Layout as micropython-lib's: package/{py,6}/NAME/latest.json
    listing files by SHA-256 prefix, the files under file/XX/PREFIX."""
    import hashlib
    import json
    import tempfile

    src = paths.UMQTT / "umqtt" / "simple.py"
    if not src.exists():
        raise UsageError("umqtt.simple is missing: run `make setup` first")
    out = pathlib.Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        mpy = pathlib.Path(tmp) / "simple.mpy"
        mpy_cross(src, mpy, name="umqtt/simple.py")
        for kind, target, data in (("py", "umqtt/simple.py", src.read_bytes()),
                                   ("6", "umqtt/simple.mpy", mpy.read_bytes())):
            digest = hashlib.sha256(data).hexdigest()[:8]  # the short hash names the file, as in micropython-lib
            f = out / "file" / digest[:2] / digest
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)
            meta = out / "package" / kind / "umqtt.simple" / "latest.json"
            meta.parent.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps({"hashes": [[target, digest]], "deps": [], "version": "1.3.4"}))
    return out
