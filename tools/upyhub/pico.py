"""An emulated Raspberry Pi Pico running build/rp2's firmware image, as a board on a serial port.

    pico = Pico(flash_image, forward={8883: ("127.0.0.1", 8883)})
    port = pico.start()          # a pty: mpremote, upyhub provision and upyhub audit drive it as a board
    pico.cut(after=3)            # power cut at the 3rd flash erase/program from now
    pico.power("on"); pico.stats(); pico.modem(False); pico.close()

The chip is rp2040js (tools/pico/emulator.mjs: flash kept in `flash_image` across resets and runs, power cuts,
cycle counts); its USB serial port is the REPL, on a pty whose path start() returns; its UART0 is a PPP link
to slirp in a private network namespace (ppplink.Link) through which the board reaches only the forwarded
ports (at 10.0.2.2) and an SNTP server (10.0.2.2:123) answering with the host's clock. What the board prints
is also kept (`console()`) and can be copied to a stream, so its log can be read while a client holds the port.

A thread relays bytes between the pieces; nothing here parses what the board sends.
"""
import json
import os
import pathlib
import queue
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
import tty

from upyhub import paths, ppplink
from upyhub.errors import UpyhubError

EMULATOR = paths.ROOT / "tools" / "pico" / "emulator.mjs"
PICO_BUILD = paths.BUILD / "pico"
RP2040JS = PICO_BUILD / "node_modules" / "rp2040js"
BOOTROM = PICO_BUILD / "bootrom.bin"
RP2 = paths.BUILD / "rp2"
FIRMWARE = RP2 / "firmware.bin"
UNAVAILABLE = RP2 / "UNAVAILABLE"
FLASH_SIZE = 2 * 1024 * 1024  # a Pico's W25Q16
CONSOLE_LIMIT = 4 * 1024 * 1024  # bytes of the board's output kept (the oldest go first)
BUFFER = 256 * 1024  # bytes queued towards one side of a relay before reading from the other stops


class PicoError(UpyhubError):
    """The emulated Pico cannot run, or did not do what was asked in time."""


def why_unavailable():
    """None when the emulated Pico can run here, else why not (one line)."""
    if UNAVAILABLE.exists():
        return UNAVAILABLE.read_text().strip()
    for path, what in ((FIRMWARE, "the rp2 image"), (RP2040JS, "rp2040js"), (BOOTROM, "the RP2040 bootrom")):
        if not path.exists():
            return "%s is missing (%s): run `make setup` (make test does it)" % (path, what)
    if not shutil.which("node"):
        return "node (Node.js) is not installed"
    return None


class _Pipe:
    """Bytes from one fd to another, buffered (both non-blocking)."""

    def __init__(self, src, dst, on_eof=None):
        self.src, self.dst, self.buf, self.eof, self.on_eof = src, dst, bytearray(), False, on_eof

    def readable(self):
        return not self.eof and len(self.buf) < BUFFER

    def read(self):
        """False when the connection broke (reset); end of file is `eof`."""
        try:
            data = os.read(self.src, 65536)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            self.eof = True
        self.buf += data
        return True

    def write(self):
        try:
            n = os.write(self.dst, self.buf)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        del self.buf[:n]
        return True


class _Forwarded:
    """One TCP connection the board opened through the modem, relayed to its address outside."""

    def __init__(self, inside, outside):
        self.inside, self.outside = inside, outside
        self.up = _Pipe(inside.fileno(), outside.fileno())
        self.down = _Pipe(outside.fileno(), inside.fileno())
        self.shut = set()

    def close(self):
        for s in (self.inside, self.outside):
            try:
                s.close()
            except OSError:
                pass


class Pico:
    def __init__(self, flash_image, *, firmware=FIRMWARE, forward=None, network=True, flash_timing=True,
                 echo=None, baudrate=115200):
        reason = why_unavailable()
        if reason:
            raise PicoError("the emulated Pico cannot run here: %s" % reason)
        self.flash_image = pathlib.Path(flash_image)
        if self.flash_image.is_symlink() or (self.flash_image.exists() and not self.flash_image.is_file()):
            raise PicoError("%s is not a flash image file" % self.flash_image)
        if self.flash_image.exists() and self.flash_image.stat().st_size != FLASH_SIZE:
            raise PicoError("%s is %d bytes, not a Pico's %d-byte flash" % (
                self.flash_image, self.flash_image.stat().st_size, FLASH_SIZE))
        self.firmware = firmware
        self.forward = dict(forward or {})
        self.network = network
        self.flash_timing = flash_timing
        self.echo = echo
        self.baudrate = baudrate
        self.proc = self.link = self.master = None
        self.port = None
        self.events = queue.Queue()
        self._console = bytearray()
        self._console_lock = threading.Condition()
        self._conns = []
        self._stop = False
        self._thread = None
        self._wake_r, self._wake_w = os.pipe()
        self._calls = queue.Queue()
        self._client = False
        self.boots = 0
        self.last_boot = 0  # console offset where the latest boot's output starts

    # --- start and stop ---
    def start(self, timeout=30):
        """Power the board on; returns its serial port (a pty path) once its REPL is up."""
        self.master, slave = os.openpty()
        tty.setraw(slave)  # the board does its own echo and line editing
        self.port = os.ttyname(slave)
        os.close(slave)  # no client yet: output goes nowhere (as USB CDC with no host)
        os.set_blocking(self.master, False)
        usb_mine, usb_chip = socket.socketpair()
        uart_mine, uart_chip = socket.socketpair()
        self.usb, self.uart = usb_mine, uart_mine
        for s in (usb_mine, uart_mine):
            s.setblocking(False)
        if self.network:
            self.link = ppplink.Link(self.forward, self.baudrate)
            self.link.start()
        argv = [shutil.which("node"), str(EMULATOR), "--rp2040js", str(RP2040JS), "--bootrom", str(BOOTROM),
                "--flash", str(self.flash_image), "--usb", str(usb_chip.fileno()),
                "--uart0", str(uart_chip.fileno())]
        if self.firmware:
            argv += ["--firmware", str(self.firmware)]
        if not self.flash_timing:
            argv += ["--flash-timing", "none"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     pass_fds=(usb_chip.fileno(), uart_chip.fileno()), start_new_session=True)
        usb_chip.close()
        uart_chip.close()
        for f in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), False)
        self._ev_buf = bytearray()
        self._err_buf = bytearray()
        self._thread = threading.Thread(target=self._loop, name="pico", daemon=True)
        self._thread.start()
        self.wait_event("boot", timeout)
        return self.port

    def close(self):
        """A clean exit: the emulator writes its flash out and stops; the modem and the port go."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # end of commands: the emulator exits
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(10)
        for c in self._conns:
            c.close()
        self._conns = []
        if self.link is not None:
            self.link.close()
            self.link = None
        for s in (getattr(self, "usb", None), getattr(self, "uart", None)):
            if s is not None:
                s.close()
        if self.master is not None:
            os.close(self.master)
            self.master = None
        if self.proc is not None:
            for f in (self.proc.stdout, self.proc.stderr):
                f.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    # --- what the board said ---
    def console(self):
        """Everything the board printed so far (bytes; a client's traffic included)."""
        with self._console_lock:
            return bytes(self._console)

    def wait_console(self, text, timeout, start=0):
        """Wait until `text` (bytes) appears in the console after offset `start`; returns the offset after it."""
        deadline = time.monotonic() + timeout
        with self._console_lock:
            while True:
                at = self._console.find(text, start)
                if at >= 0:
                    return at + len(text)
                left = deadline - time.monotonic()
                if left <= 0 or self._stop:
                    tail = bytes(self._console[-600:]).decode(errors="replace")
                    raise PicoError("the board did not print %r within %d s; it printed: %s" % (text, timeout, tail))
                self._console_lock.wait(min(left, 1))

    def wait_event(self, kind, timeout):
        """The next event from the emulator of this kind ({"event": kind, ...}); earlier others are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                ev = self.events.get(timeout=max(0.01, left))
            except queue.Empty:
                ev = None
            if ev is not None and (ev.get("event") == kind or kind in ev):
                return ev
            if ev is None and left <= 0:
                raise PicoError("the emulated Pico sent no %r event within %d s%s" % (kind, timeout, self._died()))

    def _died(self):
        if self.proc is not None and self.proc.poll() is not None:
            return " (the emulator exited with status %s: %s)" % (
                self.proc.returncode, bytes(self._err_buf[-300:]).decode(errors="replace").strip())
        return ""

    # --- what the chip is told ---
    def _command(self, obj):
        if self.proc is None or self.proc.poll() is not None:
            raise PicoError("the emulated Pico is not running%s" % self._died())
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def stats(self, timeout=10):
        """The emulator's counters: cycles, sectorsErased, pagesProgrammed, bytesProgrammed, flashOps,
        maxSectorErases, waitNs, boots, powered."""
        self._command({"stats": 1})
        return self.wait_event("stats", timeout)["stats"]

    def cut(self, after, torn=False):
        """Cut the power at the `after`-th flash erase or program from now (torn: left half done)."""
        self._command({"cut": {"after": int(after), "torn": bool(torn)}})

    def power(self, state):
        """"off", "on" or "cycle" (off, then on)."""
        self._command({"power": state})

    def modem(self, up):
        """up=False: the PPP peer goes away (slirp killed); up=True: a fresh one answers (a modem reset)."""
        if self.link is None:
            raise PicoError("this Pico has no modem")
        self._call(self.link.start if up else self.link.stop)

    # --- the relay thread ---
    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _call(self, fn):
        """Run fn on the relay thread (it owns every fd); returns its result."""
        done = queue.Queue()
        self._calls.put((fn, done))
        self._wake()
        ok, value = done.get(timeout=30)
        if not ok:
            raise value
        return value

    def _keep(self, data):
        with self._console_lock:
            self._console += data
            if len(self._console) > CONSOLE_LIMIT:
                del self._console[:len(self._console) - CONSOLE_LIMIT]
            self._console_lock.notify_all()
            if self.echo is not None:
                self._echo(data)

    def _echo(self, data):
        try:
            self.echo.write(data.decode(errors="replace").replace("\r\n", "\n"))
            self.echo.flush()
        except (OSError, ValueError):
            self.echo = None

    def follow(self, out, start=0):
        """Copy what the board printed from console offset `start` to the text stream `out`, then everything it
        prints from now on, in order."""
        with self._console_lock:
            self.echo = out
            self._echo(bytes(self._console[start:]))

    def _has_client(self):
        p = select.poll()
        p.register(self.master, select.POLLIN)
        hup = any(ev & select.POLLHUP for _, ev in p.poll(0))
        if hup and self._client:
            self._to_client.clear()
        self._client = not hup
        return self._client

    def _loop(self):
        self._to_client = bytearray()  # board output for the pty's client
        self._to_chip = bytearray()  # client input for the board
        self._uart_out = bytearray()  # modem -> board
        self._uart_in = bytearray()  # board -> modem
        while not self._stop:
            try:
                self._step()
            except Exception as exc:  # a relay bug must not leave a board silently dead: say it, stop
                self._keep(("\r\n[pico relay failed: %s: %s]\r\n" % (type(exc).__name__, exc)).encode())
                raise

    def _step(self):
        p = select.poll()
        regs = {}

        def reg(fd, ev, what):
            if fd is None or fd < 0:
                return
            regs.setdefault(fd, [0, []])
            regs[fd][0] |= ev
            regs[fd][1].append(what)

        reg(self._wake_r, select.POLLIN, "wake")
        if self.proc is not None:
            reg(self.proc.stdout.fileno(), select.POLLIN, "events")
            reg(self.proc.stderr.fileno(), select.POLLIN, "log")
        client = self._has_client()
        if client and len(self._to_chip) < BUFFER:
            reg(self.master, select.POLLIN, "client-in")
        if client and self._to_client:
            reg(self.master, select.POLLOUT, "client-out")
        if len(self._to_client) < BUFFER:
            reg(self.usb.fileno(), select.POLLIN, "usb-in")
        if self._to_chip:
            reg(self.usb.fileno(), select.POLLOUT, "usb-out")
        modem = self.link.master if self.link is not None and self.link.running else None
        if len(self._uart_in) < BUFFER:
            reg(self.uart.fileno(), select.POLLIN, "uart-in")
        if self._uart_out:
            reg(self.uart.fileno(), select.POLLOUT, "uart-out")
        if modem is not None:
            if len(self._uart_out) < BUFFER:
                reg(modem, select.POLLIN, "modem-in")
            if self._uart_in:
                reg(modem, select.POLLOUT, "modem-out")
        if self.link is not None:
            for port, (lsock, _) in self.link.listeners().items():
                reg(lsock.fileno(), select.POLLIN, ("accept", port))
            reg(self.link.ntp_socket().fileno(), select.POLLIN, "ntp")
        for c in self._conns:
            for pipe, sock in ((c.up, c.outside), (c.down, c.inside)):
                if pipe.readable():
                    reg(pipe.src, select.POLLIN, ("read", c, pipe))
                if pipe.buf:
                    reg(sock.fileno(), select.POLLOUT, ("write", c, pipe))
        for fd, (ev, _) in regs.items():
            p.register(fd, ev)
        try:
            ready = p.poll(100)  # at most 100 ms: a client may open or leave the port meanwhile
        except InterruptedError:
            return
        for fd, ev in ready:
            for what in regs.get(fd, (0, []))[1]:
                self._ready(what, fd, ev)
        self._reap()

    def _ready(self, what, fd, ev):
        if what == "wake":
            try:
                os.read(self._wake_r, 4096)
            except OSError:
                pass
            while True:
                try:
                    fn, done = self._calls.get_nowait()
                except queue.Empty:
                    break
                try:
                    done.put((True, fn()))
                except Exception as exc:
                    done.put((False, exc))
        elif what == "events":
            self._read_events()
        elif what == "log":
            try:
                self._err_buf += os.read(fd, 65536)
                del self._err_buf[:-4096]
            except (BlockingIOError, OSError):
                pass
        elif what == "client-in" and ev & select.POLLIN:
            try:
                self._to_chip += os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                pass
        elif what == "client-out" and ev & select.POLLOUT:
            try:
                del self._to_client[:os.write(self.master, self._to_client)]
            except (BlockingIOError, OSError):
                pass
        elif what == "usb-in":
            data = self._recv(self.usb)
            if data:
                self._keep(data)
                if self._client:
                    self._to_client += data
        elif what == "usb-out":
            self._send(self.usb, self._to_chip)
        elif what == "uart-in":
            data = self._recv(self.uart)
            if data and self.link is not None and self.link.running:
                self._uart_in += data  # with no modem, the board's bytes go nowhere
        elif what == "uart-out":
            self._send(self.uart, self._uart_out)
        elif what == "modem-in":
            try:
                data = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            self._uart_out += data
        elif what == "modem-out":
            try:
                del self._uart_in[:os.write(fd, self._uart_in)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._uart_in.clear()
        elif what == "ntp":
            self._answer_ntp()
        elif isinstance(what, tuple) and what[0] == "accept":
            self._accept(what[1])
        elif isinstance(what, tuple) and what[0] == "read":
            c, pipe = what[1], what[2]
            if not pipe.read():
                c.shut.add("broken")
        elif isinstance(what, tuple) and what[0] == "write":
            c, pipe = what[1], what[2]
            if not pipe.write():
                c.shut.add("broken")

    @staticmethod
    def _recv(sock):
        try:
            return sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            return b""

    @staticmethod
    def _send(sock, buf):
        try:
            del buf[:sock.send(buf)]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            buf.clear()

    def _read_events(self):
        try:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
        except (BlockingIOError, OSError):
            return
        if not chunk:
            self.events.put({"event": "exit"})
            self._stop = True
            with self._console_lock:
                self._console_lock.notify_all()
            return
        self._ev_buf += chunk
        while b"\n" in self._ev_buf:
            line, _, rest = bytes(self._ev_buf).partition(b"\n")
            self._ev_buf = bytearray(rest)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "boot":
                self.boots += 1
                with self._console_lock:
                    ev["console"] = len(self._console)  # where this boot's output starts (USB comes up after)
                self.last_boot = ev["console"]
            self.events.put(ev)

    def _answer_ntp(self):
        sock = self.link.ntp_socket()
        try:
            data, peer = sock.recvfrom(512)
        except (BlockingIOError, OSError):
            return
        reply = ppplink.sntp_reply(data)
        if reply is not None:
            try:
                sock.sendto(reply, peer)
            except OSError:
                pass

    def _accept(self, port):
        lsock, (host, out_port) = self.link.listeners()[port]
        try:
            inside, _ = lsock.accept()
        except (BlockingIOError, OSError):
            return
        try:
            outside = socket.create_connection((host, out_port), timeout=5)
        except OSError:
            inside.close()  # nothing listens outside: the board sees the connection closed
            return
        for s in (inside, outside):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._conns.append(_Forwarded(inside, outside))

    def _reap(self):
        """Half-closes passed on, finished connections closed (a reset from either side closes both)."""
        keep = []
        for c in self._conns:
            if "broken" in c.shut:
                c.close()
                continue
            for pipe, sock, name in ((c.up, c.outside, "up"), (c.down, c.inside, "down")):
                if pipe.eof and not pipe.buf and name not in c.shut:
                    c.shut.add(name)
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        c.shut.add("broken")
            if {"up", "down"} <= c.shut or "broken" in c.shut:
                c.close()
            else:
                keep.append(c)
        self._conns = keep
