"""Board code cannot reach the operator's machine: `upyhub sim` and `upyhub sim-board` run it confined.

Each attack from issue 12 is tried from code on the board, and the same code is run with --unconfined
where that shows the attack is real (so a test here cannot pass because the attack itself is broken)."""
import json
import os
import pathlib
import socket
import subprocess
import threading

import pytest

from simboardfixture import UPYHUB, landlock

pytestmark = pytest.mark.skipif(not landlock(), reason="the kernel has no Landlock: boards refuse to start confined")

# Board-side helpers: attempts print "LABEL ALLOWED" or "LABEL denied".
ATTEMPT = r"""
import os
def attempt(label, f):
    try:
        r = f()
        print(label, "denied" if r is False else "ALLOWED")
    except Exception as e:
        print(label, "denied", e)
import ffi
libc = ffi.open("libc.so.6")
_socket = libc.func("i", "socket", "iii")
_connect = libc.func("i", "connect", "ipi")
def fork():
    pid = libc.func("i", "fork", "")()
    if pid == 0:
        libc.func("v", "_exit", "i")(0)  # the child (if any) leaves at once, printing nothing
    return pid > 0
def unix_connect(path):
    fd = _socket(1, 1, 0)  # AF_UNIX, SOCK_STREAM
    if fd < 0:
        return False
    addr = b"\x01\x00" + path + b"\x00" * (108 - len(path))
    # an abstract name (leading NUL) is exactly its bytes long; a path ends at its NUL
    return _connect(fd, addr, 2 + len(path) + (0 if path[:1] == b"\x00" else 1)) == 0
"""


class UnixServer:
    """A Unix socket like ssh-agent's or docker's (path) or D-Bus's (abstract); counts connections."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self.stop = True
        self.sock.close()


def results(text):
    return dict(line.split(" ", 2)[:2] for line in text.splitlines() if " ALLOWED" in line or " denied" in line)


@pytest.fixture
def sockets(tmp_path):
    name = "upyhub-test-%d" % os.getpid()
    servers = {"path": UnixServer(str(tmp_path / "agent.sock")), "abstract": UnixServer("\0" + name)}
    yield {"path": str(tmp_path / "agent.sock"), "abstract": name}, servers
    for s in servers.values():
        s.close()


UNIX = ATTEMPT + """
attempt("unix-path", lambda: unix_connect(%(path)r))
attempt("unix-abstract", lambda: unix_connect(b"\\0" + %(abstract)r))
"""


def unix_code(addrs):
    return UNIX % {"path": addrs["path"].encode(), "abstract": addrs["abstract"].encode()}


def test_sim_board_has_no_unix_sockets(tmp_path, start_sim_board, sockets):
    addrs, servers = sockets
    flash = tmp_path / "flash"
    flash.mkdir()
    board = start_sim_board(flash)
    res = board.mpremote("exec", unix_code(addrs))
    assert results(res.stdout) == {"unix-path": "denied", "unix-abstract": "denied"}, res.stdout + res.stderr
    assert servers["path"].accepted == 0 and servers["abstract"].accepted == 0
    # Without the sandbox the same code does reach them: the attack is real.
    loose = tmp_path / "loose"
    loose.mkdir()
    res = start_sim_board(loose, "--unconfined").mpremote("exec", unix_code(addrs))
    assert results(res.stdout) == {"unix-path": "ALLOWED", "unix-abstract": "ALLOWED"}, res.stdout + res.stderr


def test_sim_board_tcp_only_to_the_hub_port(tmp_path, start_sim_board):
    hub, other = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    try:
        flash = tmp_path / "flash"
        flash.mkdir()
        (flash / "config.json").write_text(json.dumps({"port": hub.getsockname()[1]}))
        board = start_sim_board(flash)
        code = ATTEMPT + """
import socket
def tcp(port):
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    s.close()
attempt("hub", lambda: tcp(%d))
attempt("other", lambda: tcp(%d))
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
attempt("listen", lambda: socket.socket().bind(socket.getaddrinfo("0.0.0.0", 0)[0][-1]))
""" % (hub.getsockname()[1], other.getsockname()[1])
        res = board.mpremote("exec", code)
        assert results(res.stdout) == {"hub": "ALLOWED", "other": "denied", "udp": "denied", "listen": "denied"}, \
            res.stdout + res.stderr
        assert "tcp to port %d only" % hub.getsockname()[1] in board.info["confinement"]
    finally:
        hub.close()
        other.close()


def test_sim_board_size_cannot_be_bypassed(tmp_path, start_sim_board):
    flash = tmp_path / "flash"
    flash.mkdir()
    board = start_sim_board(flash, "--size", "64K")
    code = ATTEMPT + """
import vfs
big = b"x" * 4096
def posix():
    with vfs.VfsPosix(".").open("posix.bin", "wb") as f:
        for i in range(40):
            f.write(big)
def ffi_write():
    fopen = libc.func("p", "fopen", "ss")
    fwrite = libc.func("i", "fwrite", "PiiP")
    fflush = libc.func("i", "fflush", "P")
    fp = fopen("ffi.bin", "w")
    n = 0
    for i in range(40):
        n += fwrite(big, 1, len(big), fp)
    fflush(fp)
    return n == 40 * 4096
attempt("posix-write", posix)
attempt("ffi-write", ffi_write)
malloc = libc.func("p", "malloc", "L")
attempt("malloc-1G", lambda: malloc(1 << 30) != 0)
attempt("fork", fork)
attempt("system", lambda: os.system("echo pwned > pwned.txt") == 0)
"""
    res = board.mpremote("exec", code)
    assert results(res.stdout) == {"posix-write": "denied", "ffi-write": "denied", "malloc-1G": "denied",
                                   "fork": "denied", "system": "denied"}, res.stdout + res.stderr
    for name in ("posix.bin", "ffi.bin"):
        assert not (flash / name).exists() or (flash / name).stat().st_size <= 64 * 1024
    assert not (flash / "pwned.txt").exists()
    assert "file 64K" in board.info["confinement"]


# --- upyhub sim: code a board left in its flash folder ----------------------------------------------

SIM_MAIN = ATTEMPT + """
attempt("env-key", lambda: os.getenv("UPYHUB_KEY") is not None or False)
print("ENV", os.getenv("UPYHUB_KEY"))
attempt("read-host", lambda: open(%(secret)r).read())
attempt("write-host", lambda: open(%(out)r, "w").write("x"))
attempt("list-root", lambda: "config.json" in os.listdir("/") or False)
attempt("unix-path", lambda: unix_connect(%(path)r))
attempt("unix-abstract", lambda: unix_connect(b"\\0" + %(abstract)r))
attempt("fork", fork)
import sys
sys.exit(3)
"""


def planted_flash(tmp_path, addrs):
    """A flash folder whose main.py and lib/ a board wrote (what `upyhub sim` runs when they are there)."""
    flash = tmp_path / "flash"
    (flash / "lib").mkdir(parents=True)
    (flash / "config.json").write_text(json.dumps({"hostname": "localhub.azure-devices.net", "device_id": "d",
                                                    "gateway": "127.0.0.1", "port": 8883}))
    (flash / "boot.py").write_text("")
    secret = tmp_path / "host-secret.txt"
    secret.write_text("operator's secret")
    (flash / "main.py").write_text(SIM_MAIN % {"secret": str(secret), "out": str(tmp_path / "written.txt"),
                                               "path": addrs["path"].encode(), "abstract": addrs["abstract"].encode()})
    return flash


def run_sim(flash, *extra):
    return subprocess.run([UPYHUB, "sim", "--flash", str(flash)] + list(extra), capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, UPYHUB_KEY="c2VjcmV0a2V5MTIzNDU2Nzg5MA=="))


def test_sim_runs_planted_code_confined(tmp_path, sockets):
    addrs, servers = sockets
    flash = planted_flash(tmp_path, addrs)
    res = run_sim(flash)
    assert res.returncode == 3, res.stdout + res.stderr
    assert res.stdout.startswith("sim: confinement: landlock ABI")
    assert results(res.stdout) == {"env-key": "denied", "read-host": "denied", "write-host": "denied",
                                   "list-root": "ALLOWED", "unix-path": "denied", "unix-abstract": "denied",
                                   "fork": "denied"}, res.stdout
    assert "ENV None" in res.stdout and "c2VjcmV0" not in res.stdout
    assert not (tmp_path / "written.txt").exists() and "operator's secret" not in res.stdout
    assert servers["path"].accepted == 0 and servers["abstract"].accepted == 0
    # Unconfined, the same code gets out (only the VFS keeps absolute paths in the flash folder).
    res = run_sim(flash, "--unconfined")
    got = results(res.stdout)
    assert got["unix-path"] == got["unix-abstract"] == got["fork"] == "ALLOWED", res.stdout


def test_sim_refuses_a_flash_folder_holding_links(tmp_path):
    flash = planted_flash(tmp_path, {"path": "x", "abstract": "y"})
    (flash / "lib" / "certs").symlink_to(tmp_path)
    res = run_sim(flash)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "upyhub: error: refused: %s holds a symlink (lib/certs): a board's filesystem has none" % flash]


def test_sim_board_refuses_links_naming_them(tmp_path):
    flash = tmp_path / "flash"
    (flash / "a").mkdir(parents=True)
    (flash / "a" / "f").write_text("x")
    os.link(flash / "a" / "f", flash / "hard")
    res = subprocess.run([UPYHUB, "sim-board", "--flash", str(flash)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "upyhub: error: refused: %s holds a hard link (hard): a board's filesystem has none" % flash]


def test_secrets_are_owner_only_on_simulated_flash(sim_board):
    res = sim_board.mpremote("exec", "f = open('secrets.json', 'w'); f.write('{}'); f.close()")
    assert res.returncode == 0, res.stderr
    assert pathlib.Path(sim_board.flash / "secrets.json").stat().st_mode & 0o077 == 0


def test_host_writes_never_follow_links(tmp_path):
    """sim.write_flash (what `sim --device`, the demo and the tests write) refuses a folder holding a link,
    and its writes replace a link made after the check instead of writing through it."""
    from upyhub import files, sim
    from upyhub.errors import UsageError

    victim = tmp_path / "victim.txt"
    victim.write_text("operator's file")
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "config.json").symlink_to(victim)
    with pytest.raises(UsageError, match=r"holds a symlink \(config.json\)"):
        sim.write_flash(flash, hostname="h.azure-devices.net", device_id="d", ca_pem=b"", port=8883)
    fl = files.Flash(flash)
    with pytest.raises(UsageError, match="config.json"):
        fl.read("config.json")
    fl.write_atomic("config.json", b"{}")  # the link itself is replaced, its target untouched
    assert victim.read_text() == "operator's file" and not (flash / "config.json").is_symlink()
    (flash / "certs").symlink_to(tmp_path)
    with pytest.raises(UsageError, match="refused: certs in"):
        fl.write_atomic("certs/x.pem", b"x")
    assert not (tmp_path / "x.pem").exists()


def test_sim_names_an_unresolvable_hub(tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "config.json").write_text(json.dumps({"hostname": "no-such-hub.invalid", "device_id": "d",
                                                    "port": 8883}))
    res = run_sim(flash)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "upyhub: error: cannot look up the hub hostname no-such-hub.invalid from %s/config.json: the name does not "
        "resolve (unknown host, or no DNS here); set \"gateway\" there to the hub's address" % flash]
