"""A simulated MicroPython board: a pty that speaks the REPL protocols, backed by the unix port.

`SimBoard(flash).start()` opens a pty (its path is the board's "serial port") and powers the
board on. What a client sees is what MicroPython's shared/runtime/pyexec.c does on a real board:
friendly REPL (banner, `>>> `, Ctrl-C, Ctrl-D soft reset, Ctrl-E paste mode), raw REPL (Ctrl-A,
code ended by Ctrl-D, `OK` + stdout + \\x04 + error + \\x04 + `>`), raw-paste mode with its flow
control (Ctrl-E A Ctrl-A), Ctrl-B back to friendly. A soft reset restarts the MicroPython
process and runs boot.py, then main.py when in the friendly REPL; machine.reset() is a hard reset.

Code runs in one unix-port process per boot (simboard_runtime.py). The flash folder is its
filesystem root; the kernel confines the process to it (sandbox.py, Landlock), and the board
refuses to boot from a folder holding symlinks or hard links (a board's flash has none).

Not emulated: line editing history/completion in the friendly REPL, `\\n` -> `\\r\\n` conversion of
output in the raw REPL (raw output is passed as the code wrote it; the friendly REPL converts).
"""
import errno
import hashlib
import json
import os
import pathlib
import select
import signal
import struct
import subprocess
import sys
import time
import tty

from upyhub import files, paths, sandbox, sim
from upyhub.errors import UsageError

RUNTIME = pathlib.Path(__file__).with_name("simboard_runtime.py")
# Reads the runtime's source from the job pipe (fd in argv[1]) and runs it as "simboard".
# The runtime keeps using the same file object: a second one on the fd would close it when
# the first is garbage-collected.
BOOTSTRAP = """import sys
_jobs = open(int(sys.argv[1]), 'rb')
n = int(_jobs.readline())
s = b''
while len(s) < n:
    s += _jobs.read(n - len(s))
exec(compile(s, 'simboard', 'exec'))
"""
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
PASTE_WINDOW = 128  # bytes per raw-paste flow-control window (a board's 256-byte buffer / 2)
OUT_LIMIT = 256 * 1024  # queued serial output before the board's writes block
J_EXEC, J_SINGLE, J_FILE = 1, 2, 3
ST_OK, ST_EXC, ST_EXIT = 0, 1, 2
COMPOUND = ("if", "while", "for", "try", "with", "def", "class", "async", "@")


class _Job:
    def __init__(self, kind, seq, payload, on_done, cooked):
        self.kind, self.seq, self.payload = kind, seq, payload
        self.on_done = on_done
        self.cooked = cooked
        self.started = False
        self.intr_wanted = False  # Ctrl-C arrived before the code started
        self.last_intr = 0.0
        self.kbd = 3  # the interrupt character (micropython.kbd_intr); -1: Ctrl-C is data


class _Process:
    """One boot of the board: the MicroPython process and its pipes."""

    def __init__(self, board):
        self.stdin_r, self.stdin_w = os.pipe()
        self.job_r, self.job_w = os.pipe()
        self.ev_r, self.ev_w = os.pipe()
        argv = [board.micropython]
        if board.heapsize:
            argv += ["-X", "heapsize=%s" % board.heapsize]
        argv += ["-c", BOOTSTRAP, str(self.job_r), str(self.ev_w)]
        env = {}
        if board.box is not None:
            argv, env = board.box.wrap(argv, env)
        self.proc = subprocess.Popen(
            argv, stdin=self.stdin_r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(self.job_r, self.ev_w), cwd=board.flash, env=env, start_new_session=True, umask=0o077)
        os.close(self.job_r)
        os.close(self.ev_w)
        src = board.runtime_src.encode()
        conf = json.dumps({"root": board.flash, "size": board.size, "uid": board.uid})
        self._write_job(b"%d\n" % len(src) + src + conf.encode() + b"\n")
        self.out = self.proc.stdout.fileno()
        self.err = self.proc.stderr.fileno()
        for fd in (self.stdin_r, self.stdin_w, self.out, self.err, self.ev_r):
            os.set_blocking(fd, False)
        self.ev_buf = bytearray()
        self.stdin_q = bytearray()
        self.eof = set()
        self.closed = False

    def send_job(self, job):
        self._write_job(struct.pack("<BII", job.kind, job.seq, len(job.payload)) + job.payload)

    def _write_job(self, data):
        try:
            view = memoryview(data)
            while view:  # blocking: the board is idle and reads it whole
                view = view[os.write(self.job_w, view):]
        except BrokenPipeError:
            pass  # it died: the event pipe's end of file reports the crash

    def interrupt(self):
        try:
            os.kill(self.proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def read_back_stdin(self):
        """Serial input the code did not read: a board's REPL gets it next."""
        data = bytearray()
        while True:
            try:
                chunk = os.read(self.stdin_r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        data += self.stdin_q
        self.stdin_q = bytearray()
        return bytes(data)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for fd in (self.stdin_r, self.stdin_w, self.job_w, self.ev_r):
            os.close(fd)
        self.proc.stdout.close()
        self.proc.stderr.close()


class SimBoard:
    def __init__(self, flash, *, micropython=None, heapsize=None, size=0, uid=None, confine=True,
                 log=None):
        self.flash = os.path.realpath(flash)
        files.check_flash(self.flash)
        try:
            self.micropython = micropython or paths.micropython()
        except FileNotFoundError as exc:
            raise UsageError(str(exc))
        self.heapsize = heapsize
        self.size = int(size or 0)
        self.uid = uid or hashlib.sha256(self.flash.encode()).hexdigest()[:12]
        self.log = log or (lambda msg: None)
        self.runtime_src = RUNTIME.read_text()
        self.version = self._version()
        self.banner = ("MicroPython %s; upyhub simulated board with unix port\r\n"
                       'Type "help()" for more information.\r\n' % self.version).encode()
        self.box = None
        self.confinement = sandbox.UNCONFINED
        if confine:
            self.box = sandbox.Confinement(self.flash, self.micropython, file_size=self.size)
            self._hub_ports()
        self.master = None
        self.port = None
        self.client = False
        self.outq = bytearray()
        self.mode = "friendly"
        self.phase = "off"
        self.line = bytearray()
        self.lines = []
        self.esc = 0
        self.last_cr = False
        self.paste = bytearray()
        self.window = 0
        self.process = None
        self.halted = None
        self.job = None
        self.seq = 0
        self.stopping = False

    def _hub_ports(self):
        """TCP may reach only the hub port the flash's config.json names (read at every boot)."""
        try:
            cfg = sim.read_config(self.flash)
        except UsageError:
            cfg = None
        self.box.tcp_ports = sim.hub_ports(cfg) if cfg else []
        self.confinement = self.box.describe()

    def _version(self):
        code = "import sys; print('v%d.%d.%d' % sys.implementation.version[:3])"
        try:
            out = subprocess.run([self.micropython, "-c", code], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UsageError("cannot run MicroPython at %s: %s" % (self.micropython, exc))
        return out.stdout.strip() or "v?"

    # --- the serial port -------------------------------------------------------------------
    def start(self):
        """Open the pty and power the board on; returns the port path."""
        self.master, slave = os.openpty()
        tty.setraw(slave)  # no echo or line discipline: the board does its own
        self.port = os.ttyname(slave)
        os.close(slave)  # with no client holding the port, output goes nowhere (like USB CDC)
        os.set_blocking(self.master, False)
        self._power_on(hard=True)
        return self.port

    def _emit(self, data):
        if data and self.client:
            self.outq += data

    def _emit_output(self, data):
        if self.job is not None and self.job.cooked:
            data = data.replace(b"\n", b"\r\n")
        self._emit(data)

    # --- boots and resets ------------------------------------------------------------------
    def _kill(self):
        if self.process is not None:
            self.process.close()
            self.process = None
        self.job = None

    def _power_on(self, hard=False):
        if hard:
            self.mode = "friendly"
        self.halted = None
        try:
            used = files.check_flash(self.flash)
            if self.size and used > self.size:
                raise UsageError("the flash folder holds %d bytes, more than the board's %d" % (used, self.size))
            if self.box is not None:
                self._hub_ports()
            self.process = _Process(self)
        except UsageError as exc:
            self.halted = str(exc)
        except (OSError, subprocess.SubprocessError) as exc:
            self.halted = "cannot start MicroPython (%s)" % exc
        if self.halted:
            # Like a board whose flash is broken: it answers, but runs nothing.
            self.log("halted: %s" % self.halted)
            self._emit(("\r\nsimulated board halted: %s\r\n" % self.halted).encode())
            self._repl()
            return
        self.log("boot (%s REPL, pid %d)" % (self.mode, self.process.proc.pid))
        self._start_job(J_FILE, b"boot.py", self._boot_done, cooked=True)

    def _soft_reset(self):
        self._kill()
        self._emit(b"MPY: soft reboot\r\n")
        self._power_on()

    def _hard_reset(self):
        self.log("hard reset")
        self._kill()
        self._power_on(hard=True)

    def _boot_done(self, status, text):
        self._emit(text)
        if status == ST_EXIT:
            self._soft_reset()
        elif self.mode == "friendly" and status == ST_OK:
            self._start_job(J_FILE, b"main.py", self._main_done, cooked=True)
        else:
            self._repl()

    def _main_done(self, status, text):
        self._emit(text)
        if status == ST_EXIT:
            self._soft_reset()
        else:
            self._repl()

    def _repl(self):
        self.line = bytearray()
        self.lines = []
        if self.mode == "raw":
            self._emit(RAW_BANNER + b">")
            self.phase = "raw"
        else:
            self._emit(self.banner + b">>> ")
            self.phase = "friendly"

    # --- jobs ------------------------------------------------------------------------------
    def _start_job(self, kind, payload, on_done, cooked):
        if self.process is None:
            on_done(ST_EXC, ("OSError: simulated board halted: %s\r\n" % self.halted).encode())
            return
        self.seq += 1
        self.job = _Job(kind, self.seq, bytes(payload), on_done, cooked)
        self.phase = "job"
        self.process.send_job(self.job)

    def _event(self, kind, seq, data):
        job = self.job
        if kind == b"S" and job is not None and seq == job.seq:
            job.started = True
            if job.intr_wanted:
                self._interrupt()
        elif kind == b"K" and job is not None:
            job.kbd = 3 if data == b"\x03" else -1
        elif kind == b"R":
            self._hard_reset()
        elif kind == b"D" and job is not None and seq == job.seq:
            self._drain_output()
            status, text = data[0], bytes(data[1:]).replace(b"\n", b"\r\n")
            leftover = self.process.read_back_stdin()
            self.job = None
            job.on_done(status, text)
            self._feed(leftover)

    def _interrupt(self):
        job = self.job
        if not job.started:
            job.intr_wanted = True
            return
        # A second SIGINT before the first was handled would make the unix port exit.
        now = time.monotonic()
        if now - job.last_intr >= 0.5:
            job.last_intr = now
            self.process.interrupt()

    def _drain_output(self):
        for fd in (self.process.out, self.process.err):
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                self._emit_output(chunk)

    def _crashed(self):
        proc = self.process
        self._drain_output()
        rc = proc.proc.wait()
        job = self.job
        self.log("MicroPython exited with status %s" % rc)
        self._kill()
        msg = ("simulated board: MicroPython exited (status %s)\r\n" % rc).encode()
        if job is not None and job.on_done == self._raw_done:
            # Close the raw REPL exchange with the crash as its error, so the client is not left
            # waiting; then boot again in the same REPL mode.
            self._raw_done(ST_EXC, msg)
            self._power_on()
            return
        self._emit(b"\r\n" + msg)
        if job is not None and job.kind == J_FILE:
            # It died while booting: a real board would boot-loop; wait for a soft reset instead.
            self.halted = "MicroPython exited during boot (status %s)" % rc
            self._emit(("simulated board halted: %s\r\n" % self.halted).encode())
            self._repl()
        else:
            self._power_on(hard=True)

    # --- serial input: what pyexec.c does with each byte -------------------------------------
    def _feed(self, data):
        i = 0
        while i < len(data):
            if self.phase == "job":
                job = self.job
                cut = data.find(b"\x03", i) if job.kbd == 3 else -1
                end = len(data) if cut < 0 else cut
                self.process.stdin_q += data[i:end]
                if cut >= 0:
                    self._interrupt()
                    end += 1
                i = end
                continue
            b = data[i]
            i += 1
            getattr(self, "_in_" + self.phase)(b)

    def _in_off(self, b):
        pass

    def _in_raw(self, b):
        if b == 1:  # Ctrl-A: raw-paste request ("\x05A\x01") or raw REPL reset
            if len(self.line) == 2 and self.line[0] == 5:
                if self.line[1] == ord("A"):
                    self._emit(b"R\x01" + struct.pack("<H", PASTE_WINDOW) + b"\x01")
                    self.paste = bytearray()
                    self.window = PASTE_WINDOW
                    self.phase = "paste"
                else:
                    self._emit(b"R\x00>")
                self.line = bytearray()
                return
            self.line = bytearray()
            self._emit(RAW_BANNER + b">")
        elif b == 2:
            self._emit(b"\r\n")
            self.mode = "friendly"
            self._repl()
        elif b == 3:
            self.line = bytearray()
        elif b == 4:
            self._emit(b"OK")
            if not self.line:
                self._emit(b"\r\n")
                self._soft_reset()
                return
            code, self.line = self.line, bytearray()
            self._start_job(J_EXEC, code, self._raw_done, cooked=False)
        else:
            self.line.append(b)

    def _in_paste(self, b):
        if b == 4:
            self._emit(b"\x04")
            self._start_job(J_EXEC, self.paste, self._raw_done, cooked=False)
        elif b == 3:
            self._emit(b"\x04\x04KeyboardInterrupt: \r\n\x04>")
            self.phase = "raw"
        else:
            self.paste.append(b)
            self.window -= 1
            if self.window == 0:
                self._emit(b"\x01")
                self.window = PASTE_WINDOW

    def _raw_done(self, status, text):
        if status == ST_EXIT:
            self._emit(b"\x04\x04")
            self._soft_reset()
            return
        self._emit(b"\x04" + text + b"\x04>")
        self.phase = "raw"

    def _in_friendly(self, b):
        if self.esc:  # skip terminal escape sequences (arrow keys...)
            if self.esc == 1:
                self.esc = 2 if b in (ord("["), ord("O")) else 0
            elif 0x40 <= b <= 0x7E:
                self.esc = 0
            return
        cr, self.last_cr = self.last_cr, b == 13
        if b == 1:
            self._emit(b"\r\n")
            self.mode = "raw"
            self._repl()
        elif b == 2:
            self._emit(b"\r\n")
            self._repl()
        elif b == 3:
            self.line = bytearray()
            self.lines = []
            self._emit(b"\r\n>>> ")
        elif b == 4:
            if not self.line and not self.lines:
                self._emit(b"\r\n")
                self._soft_reset()
        elif b == 5:
            self.line = bytearray()
            self.lines = []
            self.paste = bytearray()
            self._emit(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
            self.phase = "fpaste"
        elif b in (8, 127):
            if self.line:
                self.line.pop()
                self._emit(b"\x08 \x08")
        elif b == 27:
            self.esc = 1
        elif b == 13 or (b == 10 and not cr):
            self._emit(b"\r\n")
            self._enter()
        elif b >= 32 or b == 9:
            self.line.append(b)
            self._emit(bytes([b]))

    def _enter(self):
        line, self.line = bytes(self.line), bytearray()
        if not self.lines and not line.strip():
            self._emit(b">>> ")
            return
        self.lines.append(line)
        src = b"\n".join(self.lines)
        if _unfinished(src) or (_compound(self.lines[0]) and line.strip()):
            self._emit(b"... ")
            return
        self.lines = []
        self._start_job(J_SINGLE, src, self._friendly_done, cooked=True)

    def _friendly_done(self, status, text):
        if status == ST_EXIT:
            self._soft_reset()
            return
        self._emit(text + b">>> ")
        self.phase = "friendly"

    def _in_fpaste(self, b):
        if b == 3:
            self._emit(b"\r\n>>> ")
            self.phase = "friendly"
        elif b == 4:
            self._emit(b"\r\n")
            self._start_job(J_EXEC, self.paste, self._friendly_done, cooked=True)
        else:
            self.paste.append(b)
            self._emit(b"\r\n=== " if b == 13 else bytes([b]))

    # --- the event loop ----------------------------------------------------------------------
    def _check_client(self):
        """Is a client holding the port? With none, the master reports a hang-up."""
        p = select.poll()
        p.register(self.master, select.POLLIN)
        hup = any(ev & select.POLLHUP for _, ev in p.poll(0))
        if hup and self.client:
            self.log("client left")
            self.outq = bytearray()
        elif not hup and not self.client:
            self.log("client connected")
        self.client = not hup

    def serve(self, until=None):
        """Run until stop() (or `until()` returns true)."""
        while not self.stopping and not (until and until()):
            self.step(0.05)

    def step(self, timeout):
        self._check_client()
        p = select.poll()
        if self.client:
            p.register(self.master, select.POLLIN | (select.POLLOUT if self.outq else 0))
        proc = self.process
        if proc is not None:
            if len(self.outq) < OUT_LIMIT:
                for fd in (proc.out, proc.err):
                    if fd not in proc.eof:
                        p.register(fd, select.POLLIN)
            p.register(proc.ev_r, select.POLLIN)
            if proc.stdin_q:
                p.register(proc.stdin_w, select.POLLOUT)
        try:
            events = p.poll(timeout * 1000)
        except InterruptedError:
            return
        for fd, ev in events:
            if self.process is not proc:
                break  # a reset replaced the process: its fds are gone
            if fd == self.master:
                self._serial_ready(ev)
            elif proc is not None and fd in (proc.out, proc.err):
                self._output_ready(proc, fd)
            elif proc is not None and fd == proc.ev_r:
                self._events_ready(proc)
            elif proc is not None and fd == proc.stdin_w:
                self._stdin_ready(proc)

    def _serial_ready(self, ev):
        if ev & select.POLLOUT and self.outq:
            try:
                n = os.write(self.master, self.outq)
                del self.outq[:n]
            except (BlockingIOError, OSError):
                pass
        if ev & select.POLLIN:
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                return
            self._feed(data)

    def _output_ready(self, proc, fd):
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            self._emit_output(chunk)
        else:
            proc.eof.add(fd)

    def _events_ready(self, proc):
        try:
            chunk = os.read(proc.ev_r, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._crashed()
            return
        proc.ev_buf += chunk
        while len(proc.ev_buf) >= 9:
            seq, n = struct.unpack("<II", proc.ev_buf[1:9])
            if len(proc.ev_buf) < 9 + n:
                break
            kind, data = bytes(proc.ev_buf[:1]), bytes(proc.ev_buf[9:9 + n])
            del proc.ev_buf[:9 + n]
            self._event(kind, seq, data)
            if self.process is not proc:
                return

    def _stdin_ready(self, proc):
        try:
            n = os.write(proc.stdin_w, proc.stdin_q)
            del proc.stdin_q[:n]
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            proc.stdin_q = bytearray()

    def stop(self):
        self.stopping = True

    def close(self):
        self._kill()
        if self.master is not None:
            os.close(self.master)
            self.master = None


def _unfinished(src):
    """Open brackets, an open triple-quoted string or a trailing backslash: more lines to come."""
    depth = 0
    quote = None
    i = 0
    while i < len(src):
        c = src[i:i + 1]
        if quote:
            if c == b"\\":
                i += 1
            elif src[i:i + len(quote)] == quote:
                i += len(quote) - 1
                quote = None
        elif c == b"#":
            while i < len(src) and src[i:i + 1] != b"\n":
                i += 1
        elif c in (b"'", b'"'):
            quote = c * 3 if src[i:i + 3] == c * 3 else c
            i += len(quote) - 1
        elif c in b"([{":
            depth += 1
        elif c in b")]}":
            depth -= 1
        i += 1
    if quote and len(quote) == 1:
        quote = None  # an unterminated one-line string is a syntax error, not a continuation
    return depth > 0 or quote is not None or src.rstrip(b" \t").endswith(b"\\")


def _compound(first_line):
    s = first_line.strip()
    word = s.split(None, 1)[0].rstrip(b":").decode("ascii", "replace") if s else ""
    return word in COMPOUND or s.startswith(b"@") or s.endswith(b":")


def serve(flash, *, link=None, out=sys.stdout, verbose=False, **kw):
    """Run a simulated board until SIGINT/SIGTERM; print `port: PATH` first (machine-readable)."""
    log = (lambda msg: print("sim-board: " + msg, file=sys.stderr, flush=True)) if verbose else None
    board = SimBoard(flash, log=log, **kw)

    def terminate(signum, frame):
        board.stop()

    old = {s: signal.signal(s, terminate) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        port = board.start()
        if link:
            tmp = link + ".tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(port, tmp)
            os.replace(tmp, link)
        print("port: %s" % port, file=out)
        if link:
            print("link: %s" % link, file=out)
        print("flash: %s" % board.flash, file=out)
        print("confinement: %s" % board.confinement, file=out, flush=True)
        board.serve()
    finally:
        board.close()
        if link and os.path.islink(link) and os.readlink(link) == board.port:
            os.unlink(link)
        for s, h in old.items():
            signal.signal(s, h)
