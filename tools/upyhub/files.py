"""Files on the host: input files, whole-or-absent writes, and a board's flash folder opened without following links.

A flash folder is written by code running on a simulated board, so it is untrusted: a symlink or
hard link placed there must never make a host tool read or write anything outside it.
`check_flash()` refuses a folder holding links or special files (one line naming the first one),
and `Flash` opens every path component relative to the folder with O_NOFOLLOW, so a link
created after the check is refused too (never followed).
"""
import errno
import os
import pathlib
import stat

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


def _write_fd(fd, data):
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path, data, private=False):
    """Temp file, flush, fsync, rename: the file is whole or absent. private: owner-only (mode 0600), as keys are."""
    p = pathlib.Path(path)
    if p.is_dir():
        raise UsageError("output is a directory: %s" % path)
    if not p.parent.is_dir():
        raise UsageError("output folder does not exist: %s" % p.parent)
    tmp = p.with_name(p.name + ".tmp")
    if tmp.is_symlink():
        tmp.unlink()  # never write through a link left in the temporary name
    _write_fd(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600 if private else 0o666),
              data)
    os.replace(tmp, p)


def check_flash(flash):
    """Raise UsageError unless `flash` is a folder of plain files and folders only; returns the bytes it holds.

    A board's filesystem has no symlinks, hard links, sockets or devices: a flash folder holding
    one was tampered with, and the message names it."""
    flash = pathlib.Path(flash)
    if flash.is_symlink() or not flash.is_dir():
        raise UsageError("flash folder %s does not exist" % flash if not flash.exists()
                         else "flash folder %s is not a folder" % flash)
    total = 0
    for dirpath, dirnames, filenames in os.walk(flash):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, flash)
            if stat.S_ISLNK(st.st_mode):
                raise UsageError("refused: %s holds a symlink (%s): a board's filesystem has none" % (flash, rel))
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    raise UsageError("refused: %s holds a hard link (%s): a board's filesystem has none"
                                     % (flash, rel))
                total += st.st_size
            elif not stat.S_ISDIR(st.st_mode):
                raise UsageError("refused: %s holds a special file (%s): a board's filesystem has none"
                                 % (flash, rel))
    return total


class Flash:
    """A flash folder opened without following links: every component is opened relative to its parent
    with O_NOFOLLOW. Paths are relative, "/"-separated ("certs/active/roots.pem")."""

    def __init__(self, root):
        self.root = pathlib.Path(root)
        if self.root.is_symlink() or not self.root.is_dir():
            raise UsageError("flash folder not found: %s" % root)

    def _refuse(self, rel, what="a symlink or special file"):
        return UsageError("refused: %s in %s is %s, not a board's file or folder" % (rel, self.root, what))

    def _dir_fd(self, parts, create=False):
        """An fd of the folder parts[...] under the root (created when asked), never through a link."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i, name in enumerate(parts):
                if name in ("", ".", ".."):
                    raise UsageError("refused: %r is not a path inside the flash folder" % "/".join(parts))
                try:
                    nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(name, 0o700, dir_fd=fd)
                    nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise self._refuse("/".join(parts[:i + 1])) from None
                    raise
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _split(self, rel):
        parts = [p for p in str(rel).split("/") if p]
        if not parts:
            raise UsageError("refused: empty path inside the flash folder")
        return parts[:-1], parts[-1]

    def read(self, rel, limit=1 << 20):
        """The file's bytes, or None when it (or its folder) does not exist. A link is refused."""
        folders, name = self._split(rel)
        try:
            dfd = self._dir_fd(folders)
        except FileNotFoundError:
            return None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._refuse(rel) from None
            raise
        finally:
            os.close(dfd)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                raise self._refuse(rel, "not a plain file" if not stat.S_ISREG(st.st_mode) else "a hard link")
            if st.st_size > limit:
                raise UsageError("refused: %s in %s is larger than %d bytes" % (rel, self.root, limit))
            return f.read(limit + 1)[:limit]

    def write_atomic(self, rel, data, private=False):
        """Whole or absent, through a temporary name, folders created as needed; never through a link."""
        folders, name = self._split(rel)
        dfd = self._dir_fd(folders, create=True)
        try:
            tmp = name + ".tmp"
            try:
                st = os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise self._refuse("/".join(folders + [tmp]))
                os.unlink(tmp, dir_fd=dfd)
            except FileNotFoundError:
                pass
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise self._refuse(rel, "a folder")
            except FileNotFoundError:
                pass
            _write_fd(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                              0o600 if private else 0o644, dir_fd=dfd), data)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)  # a link at `name` is replaced, not followed
        finally:
            os.close(dfd)
