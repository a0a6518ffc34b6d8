"""One confinement for every way the host runs board code: `sim`, `sim-board` and the tests' devices.

Code on a simulated board is untrusted (a board back from the field, code someone sent it). The
MicroPython process that runs it is started through this module's launcher
(`python -I -m upyhub.sandbox SPEC -- ARGV`), a fresh single-threaded process that confines
itself with kernel mechanisms and then execs the interpreter:

  limits     setrlimit: file size (a sim-board's --size), address space, open files, no core dumps
  root       uid 0 keeps its uid (files it writes keep their owner) but loses every capability
  landlock   files: read, write and list only below the flash folder; read the code folders
             (firmware tree, test stand-ins); read and execute the interpreter and its libraries.
             network (ABI 4+): connect over TCP only to the ports given (the hub's, from
             config.json), bind none. scopes (ABI 6+): no abstract Unix sockets or signals to
             processes outside the sandbox.
  seccomp    (libseccomp) sockets only AF_INET/AF_INET6 streams: no Unix sockets (path or
             abstract), no UDP, raw or netlink; no new processes (threads only); no ptrace,
             mount, namespaces, io_uring, bpf, keyrings or file handles.
  env        only what the interpreter is given, never the operator's environment: of that, only
             PASS_ENV (settings of the simulated hardware, no secrets) reaches the interpreter

Inside MicroPython the flash folder is also the filesystem root (its VFS is remounted there by
the code the host hands it first), so paths, `..` and relative paths all stay in it.

`Confinement(...)` checks what the kernel offers and refuses (`Unavailable`, one line) when
Landlock or seccomp are missing; `--unconfined` is the explicit way to run anyway. A kernel
whose Landlock has no network rules (before ABI 4) is reported, never hidden: `describe()`
says what is and is not confined.
"""
import ctypes
import errno
import json
import os
import resource
import signal
import struct
import subprocess
import sys

from upyhub.errors import UpyhubError

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # same on every arch
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECUREBITS = 28
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
# SECBIT_NOROOT (+locked), NO_SETUID_FIXUP (+locked), KEEP_CAPS_LOCKED, NO_CAP_AMBIENT_RAISE (+locked):
# after exec, uid 0 gets no capabilities back.
_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80

_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1

# The host's environment variables that reach a board: settings of the simulated hardware only (the
# tests' RTC stand-in library, the 32-bit port's memory model). Nothing else, so no key or token.
PASS_ENV = ("LD_PRELOAD", "MP32_MBEDTLS_ALLOC")
UNCONFINED = "none (--unconfined): only MicroPython's VFS keeps paths inside the flash folder"
MEMORY = 512 * 1024 * 1024  # address space of the interpreter: far above a board, far below the host
OPEN_FILES = 64
FILE_SIZE = 64 * 1024 * 1024  # largest file when the flash has no --size

# Syscalls a board's code never needs and that reach past the sandbox or the kernel's surface.
_DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "unshare", "setns", "mount", "umount2",
           "pivot_root", "chroot", "keyctl", "add_key", "request_key", "bpf", "userfaultfd", "perf_event_open",
           "io_uring_setup", "io_uring_enter", "io_uring_register", "name_to_handle_at", "open_by_handle_at",
           "fork", "vfork", "socketpair", "kexec_load", "init_module", "finit_module", "delete_module", "acct",
           "swapon", "swapoff", "reboot", "syslog", "mknod", "mknodat", "fanotify_init", "quotactl")
_AF_INET, _AF_INET6, _SOCK_STREAM, _CLONE_THREAD = 2, 10, 1, 0x10000


class Unavailable(UpyhubError):
    """The kernel cannot confine board code here (the message says what is missing and what to do)."""


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


def seccomp_problem():
    """None when libseccomp (through pyseccomp) can build and load filters here, else why not."""
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, RuntimeError, OSError) as exc:
        return "libseccomp is not usable (%s): run `make setup`" % exc
    return None


def shared_objects(binary):
    """The ELF interpreter and libraries `binary` loads (from ldd), resolved to real paths."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("/") and os.path.exists(word):
                found.append(os.path.realpath(word))
    return sorted(set(found))


def _elf_class(path):
    with open(path, "rb") as f:
        head = f.read(5)
    return 32 if head[4:5] == b"\x01" else 64


def _size_text(n):
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= div and n % div == 0:
            return "%d%s" % (n // div, unit)
    return "%d bytes" % n


class Confinement:
    """How one board process is confined: its flash folder, code folders, the interpreter, hub ports, limits.

    flash: the folder the code may read and write (the board's filesystem).
    interpreter: the MicroPython binary (read and executed, with its libraries).
    code_dirs: folders it may only read (a firmware tree, stand-in modules).
    tcp_ports: the only TCP ports it may connect to (the hub's); empty: no TCP at all.
    file_size: the largest file it may write (a sim-board's --size), 0 for the default cap.
    """

    def __init__(self, flash, interpreter, *, code_dirs=(), tcp_ports=(), file_size=0, memory=MEMORY):
        self.flash = os.path.realpath(flash)
        self.interpreter = interpreter
        self.code_dirs = [os.path.realpath(d) for d in code_dirs if os.path.isdir(d)]
        self.tcp_ports = sorted({int(p) for p in tcp_ports})
        self.file_size = int(file_size) or FILE_SIZE
        self.memory = int(memory)
        self.abi = abi()
        if self.abi < 1:
            raise Unavailable("the kernel has no Landlock (Linux 5.13+ with lsm=landlock): board code cannot be "
                              "confined to its flash folder; use --unconfined to run it anyway, for trusted code only")
        problem = seccomp_problem()
        if problem:
            raise Unavailable("%s; use --unconfined to run board code without it, for trusted code only" % problem)
        self.passed_env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        self.preload = self.passed_env.get("LD_PRELOAD", "")
        try:
            self.exec_files = sorted({os.path.realpath(interpreter)} | set(shared_objects(interpreter))
                                     | {os.path.realpath(f) for f in self.preload.replace(":", " ").split()
                                        if os.path.isfile(f)})
        except (OSError, subprocess.CalledProcessError) as exc:
            raise Unavailable("cannot list the libraries %s loads (ldd): %s" % (interpreter, exc))
        self.bits = _elf_class(os.path.realpath(interpreter))

    def describe(self):
        """One line: what is confined, and what this kernel cannot confine."""
        ports = ", ".join(map(str, self.tcp_ports)) or "none"
        parts = ["landlock ABI %d: files below the flash folder only" % self.abi]
        if self.abi >= 4:
            parts.append("tcp to port %s only" % ports if self.tcp_ports else "no tcp")
        else:
            parts.append("tcp NOT limited (Landlock ABI %d has no network rules; Linux 6.7+ has)" % self.abi)
        if self.bits == 32 and os.uname().machine == "x86_64":
            parts.append("seccomp: no new processes (socket families NOT filtered: 32-bit socketcall)")
        else:
            parts.append("seccomp: no unix/udp/raw sockets, no new processes")
        parts.append("limits: file %s, memory %s" % (_size_text(self.file_size), _size_text(self.memory)))
        return "; ".join(parts)

    def spec(self, env):
        env = dict(env, **self.passed_env)
        return {"flash": self.flash, "code": self.code_dirs, "exec": self.exec_files, "tcp": self.tcp_ports,
                "fsize": self.file_size, "memory": self.memory, "env": env, "bits": self.bits}

    def wrap(self, argv, env):
        """(argv, env) for Popen: the launcher, which confines itself and then execs argv with env."""
        return [sys.executable, "-I", "-m", "upyhub.sandbox", json.dumps(self.spec(env)), "--"] + list(argv), {}


# --- the launcher (runs in the child, before the interpreter) ------------------------------------

def _limits(spec):
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    for res, value in ((resource.RLIMIT_FSIZE, spec["fsize"]), (resource.RLIMIT_AS, spec["memory"]),
                       (resource.RLIMIT_NOFILE, OPEN_FILES), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))


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


def _landlock(libc, spec):
    level = abi()
    rights = _fs_rights(level)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if level >= 4 else 0
    if level >= 6:
        attr = struct.pack("=QQQ", rights, net, _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL)
    else:
        attr = struct.pack("=QQ", rights, net)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _syscall(libc, _SYS_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    rules = [(spec["flash"], rights & ~_EXECUTE)]
    rules += [(d, _READ_FILE | _READ_DIR) for d in spec["code"]]
    rules += [(f, _EXECUTE | _READ_FILE) for f in spec["exec"]]
    for path, allowed in rules:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd), 12)
            _syscall(libc, _SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), rule,
                     ctypes.c_uint32(0))
        finally:
            os.close(fd)
    if net:
        for port in spec["tcp"]:
            rule = ctypes.create_string_buffer(struct.pack("=QQ", _NET_CONNECT_TCP, port), 16)
            _syscall(libc, _SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_NET_PORT), rule,
                     ctypes.c_uint32(0))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
    _syscall(libc, _SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    os.close(ruleset)


def _seccomp(spec):
    """The filter (built before Landlock closes the files libseccomp might read; loaded last)."""
    import pyseccomp as sc

    f = _filter(sc, sockets=True)
    if spec["bits"] == 32 and sc.system_arch() == sc.Arch.X86_64:
        # A 32-bit x86 interpreter creates sockets through socketcall(), whose arguments are in memory
        # where seccomp cannot read them: its socket families are not filtered (describe() says so).
        x86 = _filter(sc, sockets=False)
        x86.remove_arch(sc.Arch.NATIVE)
        x86.add_arch(sc.Arch.X86)
        f.merge(x86)
    return f


def _filter(sc, sockets):
    f = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in _DENIED:
        try:
            f.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):
            pass  # a syscall this architecture does not have
    if sockets:
        no_sock = sc.ERRNO(errno.EACCES)
        f.add_rule(no_sock, "socket", sc.Arg(0, sc.LT, _AF_INET))  # AF_UNSPEC, AF_UNIX
        f.add_rule(no_sock, "socket", sc.Arg(0, sc.GT, _AF_INET6))  # netlink, packet, vsock, ...
        for family in range(_AF_INET + 1, _AF_INET6):  # ax25, ipx, appletalk, ...
            f.add_rule(no_sock, "socket", sc.Arg(0, sc.EQ, family))
        for family in (_AF_INET, _AF_INET6):
            for kind in [0] + list(range(2, 16)):  # every type but SOCK_STREAM (flags live above 0xf)
                f.add_rule(no_sock, "socket", sc.Arg(0, sc.EQ, family), sc.Arg(1, sc.MASKED_EQ, 0xF, kind))
    f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))  # threads yes, processes no
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # its flags are in memory: libc falls back to clone
    return f


def _launch(argv):
    spec = json.loads(argv[0])
    cmd = argv[2:]
    try:
        filt = _seccomp(spec)
        libc = _libc()
        _limits(spec)
        if os.geteuid() == 0 and _has_capabilities():
            _drop_capabilities(libc)
        _landlock(libc, spec)
        filt.load()
    except Exception as exc:  # the board must not run half-confined
        os.write(2, ("upyhub sandbox: cannot confine the board: %s\n" % exc).encode())
        os._exit(126)
    os.chdir(spec["flash"])
    os.execve(cmd[0], cmd, spec["env"])


if __name__ == "__main__":
    _launch(sys.argv[1:])
