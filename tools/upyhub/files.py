"""Whole-or-absent file writes on the host (bundles, flash folders, key files, the hub's PKI)."""
import os
import pathlib

from upyhub.errors import UsageError


def read_file(path, what="certificate file"):
    """The bytes of an input file; a missing, unreadable or empty one is a one-line UsageError."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise UsageError("%s not found: %s" % (what, path))
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError("cannot read %s: %s" % (path, exc.strerror)) from None
    if not data:
        raise UsageError("%s is empty: %s" % (what, path))
    return data


def write_atomic(path, data, private=False):
    """Temp file, flush, fsync, rename: the file is whole or absent. private: owner-only (mode 0600), as keys are."""
    p = pathlib.Path(path)
    if p.is_dir():
        raise UsageError("output is a directory: %s" % path)
    if not p.parent.is_dir():
        raise UsageError("output folder does not exist: %s" % p.parent)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
