"""A PPP modem for the emulated Pico: Debian's slirp in a private network namespace that holds nothing but
loopback, with the ports the board may reach forwarded out of it.

The board's UART0 speaks PPP to slirp on a pty. Inside slirp's user-space network the board is 10.0.2.15 and
10.0.2.2 is the loopback of the namespace slirp runs in; that loopback holds only listening sockets this
module made there: the TCP ports in `forward` (each connection relayed to an address on the host, such as the
local hub's MQTT port) and UDP 123, answered with the host's clock (SNTP). Nothing else is reachable: the
namespace has no other interface, no route and no DNS.

How it is built, without root where the kernel allows unprivileged user namespaces: `unshare --net --uts
--mount` (plus `--user --map-root-user` when not root) runs a small supervisor inside (SUPERVISOR below). It
brings loopback up, gives slirp a host name of its own that does not resolve to 127.0.0.1 (slirp refuses to
run otherwise: a private /etc/hosts and UTS name), binds the listening sockets and hands them to this process
over an inherited socket pair (SCM_RIGHTS), so relaying happens out here, in the host's network, with no
setns(). Then it starts slirp on a pty it is sent, again and again: `stop()` kills slirp (the peer is gone,
as when a modem loses its carrier), `start()` runs a fresh one (a modem that reset and answers again).

slirp's own services stay shut: its "exec" address (10.0.2.1) needs a telnetd helper that Debian does not
ship, the control address (10.0.2.0) is not enabled by these options, and HOME is an empty folder so no
~/.slirprc is read. The plain /usr/bin/slirp build exits at once on 64-bit machines (a select() timeout
overflow); the same package's slirp-fullbolt works, so that is the one used.
"""
import json
import os
import pty
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import tty

from upyhub.errors import UpyhubError

SLIRP = "/usr/bin/slirp-fullbolt"
HOST_ALIAS = "10.0.2.2"  # the namespace's loopback, as the board sees it
BOARD_ADDRESS = "10.0.2.15"
NTP_PORT = 123
NTP_DELTA = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)

# Runs inside the namespaces: argv = control fd, hosts file, TCP ports to listen on (comma-separated).
SUPERVISOR = r"""
import fcntl, json, os, signal, socket, struct, subprocess, sys
ctl = socket.socket(fileno=int(sys.argv[1]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS: loopback up
s.close()
subprocess.run(["mount", "--bind", sys.argv[2], "/etc/hosts"], check=True)
socket.sethostname("upyhub-ppp")
socks = []
for port in [int(p) for p in sys.argv[3].split(",") if p]:
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("127.0.0.1", port))
    t.listen(16)
    socks.append(t)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", %(ntp)d))
socks.append(u)
socket.send_fds(ctl, [b"ready"], [x.fileno() for x in socks])
for x in socks:
    x.close()
slirp = None
def stop():
    global slirp
    if slirp is not None:
        slirp.kill()
        slirp.wait()
        slirp = None
while True:
    msg, fds, _, _ = socket.recv_fds(ctl, 4096, 1)
    if not msg:
        stop()
        break
    cmd = json.loads(msg)
    if cmd["do"] == "start":
        stop()
        slirp = subprocess.Popen(cmd["argv"], stdin=fds[0], stdout=fds[0], stderr=subprocess.DEVNULL,
                                 env={"HOME": cmd["home"], "PATH": "/usr/bin:/bin"}, start_new_session=True)
        os.close(fds[0])
    elif cmd["do"] == "stop":
        stop()
    ctl.send(b"ok")
"""


class Unavailable(UpyhubError):
    """No PPP link can be made here (the message says what is missing)."""


def why_unavailable():
    """None when a link can be made here, else the reason in one line."""
    if not os.path.exists(SLIRP):
        return "%s is missing (Debian's slirp package)" % SLIRP
    if not shutil.which("unshare"):
        return "unshare(1) is missing (util-linux)"
    return None


def sntp_reply(request, now=None):
    """The answer to an SNTP request (RFC 4330): server mode, stratum 1, the host's clock; None when the
    request is not one."""
    if len(request) < 48 or request[0] & 7 != 3:
        return None
    now = time.time() if now is None else now
    secs, frac = int(now) + NTP_DELTA, int((now % 1) * 2 ** 32)
    stamp = struct.pack("!II", secs, frac)
    return (bytes([(request[0] & 0x38) | 4, 1, request[2], 0xEC]) + bytes(8) + b"LOCL" + stamp
            + request[40:48] + stamp + stamp)


class Link:
    """slirp in its own network namespace; the board's side of the modem is `modem_fd()` (a pty master).

    forward: {port inside: (host, port) outside}: TCP the board may open to 10.0.2.2:port.
    The caller relays: listeners() gives the sockets to accept on, ntp_socket() the UDP one to answer.
    """

    def __init__(self, forward, baudrate=115200):
        reason = why_unavailable()
        if reason:
            raise Unavailable("no PPP link: %s" % reason)
        self.forward = dict(forward)
        self.baudrate = baudrate
        self.tmp = tempfile.TemporaryDirectory(prefix="upyhub-ppp-")
        self.home = os.path.join(self.tmp.name, "home")
        os.mkdir(self.home, 0o700)
        hosts = os.path.join(self.tmp.name, "hosts")
        with open(hosts, "w") as f:
            # slirp looks its host name up and will not run when it is loopback: a private, unroutable one.
            f.write("127.0.0.1 localhost\n10.255.255.1 upyhub-ppp\n")
        self.ctl, inner = socket.socketpair()
        argv = ["unshare", "--net", "--uts", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            argv[1:1] = ["--user", "--map-root-user"]
        code = SUPERVISOR % {"ntp": NTP_PORT}
        ports = ",".join(str(p) for p in sorted(self.forward))
        self.proc = subprocess.Popen(argv + ["--", sys.executable, "-I", "-c", code, str(inner.fileno()), hosts,
                                             ports],
                                     pass_fds=(inner.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        inner.close()
        self.ctl.settimeout(20)
        try:
            msg, fds, _, _ = socket.recv_fds(self.ctl, 64, len(self.forward) + 1)
        except (OSError, socket.timeout):
            msg, fds = b"", []
        if msg != b"ready" or len(fds) != len(self.forward) + 1:
            err = self._stderr()
            self.close()
            raise Unavailable("no PPP link: the network namespace could not be made (%s)" % (err or "no answer"))
        socks = [socket.socket(fileno=fd) for fd in fds]
        self._listeners = dict(zip(sorted(self.forward), socks[:-1]))
        self._ntp = socks[-1]
        for s in socks:
            s.setblocking(False)
        self.master = None
        self.running = False

    def _stderr(self):
        try:
            self.proc.wait(2)
            return self.proc.stderr.read().decode(errors="replace").strip().splitlines()[-1][:200]
        except Exception:
            return ""

    def listeners(self):
        """{port inside: (listening socket, (host, port) outside)}."""
        return {p: (s, self.forward[p]) for p, s in self._listeners.items()}

    def ntp_socket(self):
        return self._ntp

    def _ask(self, cmd, fds=()):
        try:
            socket.send_fds(self.ctl, [json.dumps(cmd).encode()], list(fds))
            if self.ctl.recv(16) != b"ok":
                raise OSError("no answer")
        except OSError as exc:
            raise UpyhubError("the PPP link's supervisor is gone (%s)" % exc)

    def start(self):
        """A fresh slirp on a fresh pty (a modem answering after a reset); returns the pty master (non-blocking)."""
        self.stop()
        master, slave = pty.openpty()
        tty.setraw(slave)  # bytes, not lines: PPP frames
        argv = [SLIRP, "ppp", "mtu 1500", "baudrate %d" % self.baudrate]
        try:
            self._ask({"do": "start", "argv": argv, "home": self.home}, [slave])
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.master, self.running = master, True
        return master

    def stop(self):
        """Kill slirp: the board's PPP peer is gone (no answer to its LCP echoes)."""
        if self.running:
            self._ask({"do": "stop"})
            self.running = False
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def close(self):
        try:
            if self.running:
                self.stop()
        except UpyhubError:
            pass
        for s in list(getattr(self, "_listeners", {}).values()) + [getattr(self, "_ntp", None)]:
            if s is not None:
                s.close()
        self.ctl.close()  # the supervisor reads end of file: it stops slirp and exits
        if self.proc.poll() is None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc.stderr.close()
        self.tmp.cleanup()
