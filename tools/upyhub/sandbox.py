"""Kernel-level confinement for the simulated board's MicroPython process (Linux Landlock).

The simulated board mounts its flash folder as `/` inside MicroPython (see simboard_runtime.py),
but the unix port also has `ffi`, `os.system` and `vfs.VfsPosix`, so code sent to the board could
remount the host's root. Landlock closes that at the kernel: after `confine()` the process can
read, write and list only below the flash folder, read (and execute) the interpreter's own files,
and cannot signal or ptrace processes outside its sandbox. Running as root, it also loses every
capability (it stays uid 0 so files it writes keep the owner the flash folder already has).

Only `abi()` and `preexec()` are public; everything runs with ctypes, no extra dependency.
"""
import ctypes
import os
import struct
import subprocess

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on every arch
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECUREBITS = 28
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
# SECBIT_NOROOT (+locked), NO_SETUID_FIXUP (+locked), KEEP_CAPS_LOCKED, NO_CAP_AMBIENT_RAISE (+locked):
# after exec, uid 0 gets no capabilities back.
_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


def _fs_rights(abi):
    """Every filesystem right the kernel's Landlock ABI knows (all are denied unless granted)."""
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= 1 << 13  # REFER (rename/link across directories)
    if abi >= 3:
        rights |= _TRUNCATE
    if abi >= 5:
        rights |= _IOCTL_DEV
    return rights


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _syscall(libc, *args):
    ret = libc.syscall(*args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, "landlock syscall %d: %s" % (args[0], os.strerror(err)))
    return ret


def abi():
    """The kernel's Landlock ABI version, 0 when Landlock is missing or disabled."""
    try:
        libc = _libc()
        ret = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(int(ret), 0)


def shared_objects(binary):
    """The ELF interpreter and libraries `binary` loads (from ldd), resolved to real paths."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("/") and os.path.exists(word):
                found.append(os.path.realpath(word))
    return sorted(set(found))


def preexec(rw_dir, read_files):
    """A subprocess `preexec_fn` that confines the child before it execs.

    rw_dir: the only folder the child may list, read and write (no execute).
    read_files: files the child may read and execute (the interpreter and its libraries).
    """
    level = abi()
    if level < 1:
        raise OSError("Landlock is not available in this kernel")
    rights = _fs_rights(level)
    file_rights = rights & (_EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV)
    dir_rights = rights & ~_EXECUTE
    if level >= 6:
        attr = struct.pack("=QQQ", rights, 0, _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL)
    else:
        attr = struct.pack("=QQ", rights, 0)
    rw_dir = os.path.realpath(rw_dir)
    read_files = [os.path.realpath(f) for f in read_files]
    drop_caps = os.geteuid() == 0 and _has_capabilities()

    def apply():
        libc = _libc()
        if drop_caps:
            _drop_capabilities(libc)
        buf = ctypes.create_string_buffer(attr, len(attr))
        ruleset = _syscall(libc, _SYS_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
        rules = [(rw_dir, dir_rights)] + [(f, file_rights & (_EXECUTE | _READ_FILE)) for f in read_files]
        for path, allowed in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
                _syscall(libc, _SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), rule,
                         ctypes.c_uint32(0))
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
        _syscall(libc, _SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
        os.close(ruleset)

    return apply


def _has_capabilities():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16) != 0
    except OSError:
        pass
    return True


def _drop_capabilities(libc):
    """uid 0 without capabilities: no reboot, no module loading, no raw network, no clock setting."""
    if libc.prctl(_PR_SET_SECUREBITS, _SECUREBITS, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(SET_SECUREBITS)")
    cap = 0
    while libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
