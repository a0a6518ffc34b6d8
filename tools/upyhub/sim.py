"""Simulated boards: the real firmware on the MicroPython unix port, a folder as its flash.

    write_flash(flash, hostname=..., device_id=..., device_key=..., ca_pem=..., port=..., gateway="127.0.0.1")
    proc = start(flash)             # subprocess.Popen, stdout = the device's log lines
    argv, env = command(flash)      # what start() runs

The firmware comes from the flash folder when it holds a board image (main.py + lib/), else from
the compiled tree `build/mpy` (`upyhub build --board unix --out build/mpy`), or with `source=True`
from the checkout's .py files (firmware/, boards/unix/, lib/).

The firmware runs confined (sandbox.py): the flash folder is its filesystem root and the only
place it can read or write, it may connect over TCP only to the port config.json names, and it
gets none of the operator's environment. A flash folder holding links is refused.
"""
import json
import os
import pathlib
import socket
import subprocess
import time

from upyhub import certs, errors, files, paths, sandbox
from upyhub.errors import UpyhubError, UsageError

MPY = paths.BUILD / "mpy"
# UPYHUB_TREE: another compiled tree to run (tests use a private build)
TREE_ENV = "UPYHUB_TREE"

# Runs first in the interpreter (trusted, from the host): the flash folder becomes the VFS root and the
# code folders are mounted read-only beside it (/.code0, ...), as a board sees its filesystem. Lean (~300
# bytes of heap: the heap budgets are measured through it): the kernel confinement keeps `..` and links
# from leaving the folder; _Root only works around 1.25's VfsPosix.rename, which loses its first path.
_MOUNT = """import vfs, os, sys
class _Root:
    def __init__(self, p):
        self.p = vfs.VfsPosix(p)
    def __getattr__(self, n):
        return getattr(self.p, n)
    def rename(self, a, b):
        self.p.chdir('/')
        self.p.rename(a.lstrip('/') or '.', b.lstrip('/') or '.')
    def mount(self, r, m):
        pass
    def umount(self):
        pass
vfs.umount('/')
vfs.mount(_Root(%(flash)r), '/')
for _i, _d in enumerate(%(code)r):
    vfs.mount(vfs.VfsPosix(_d), '/.code%%d' %% _i, readonly=True)
os.chdir('/')
sys.path[:] = %(path)r
"""
# Then the firmware: boot.py and main.py, as a board runs them.
_BOOT = """_hosts = %(hosts)r
if _hosts:
    import socket as _s

    class _Net:
        # the hub's hostname, resolved by the host (the sandbox has no DNS)
        def __getattr__(self, name):
            return getattr(_s, name)

        def getaddrinfo(self, host, *a):
            return _s.getaddrinfo(_hosts.get(host, host), *a)

    sys.modules['socket'] = _Net()
del _hosts
exec(open(%(boot)r).read())
exec(open(%(main)r).read())
"""


def mount_code(flash, mounts, path):
    """MicroPython code that makes `flash` the VFS root with the `mounts` folders beside it, sys.path = path."""
    return _MOUNT % {"flash": str(flash), "code": [str(m) for m in mounts], "path": list(path)}


def run_on_flash(flash, code, timeout=60):
    """Run trusted host code (it sees the flash folder as "/" and the device package on sys.path) in the
    board's confinement, so nothing a board left on its flash (a link, a file) reaches the host through it.
    Returns the CompletedProcess (text)."""
    flash = pathlib.Path(flash).resolve()
    files.check_flash(flash)
    interpreter = paths.micropython()
    argv = [interpreter, "-c", mount_code(flash, [paths.LIB], ["/.code0"]) + code]
    argv, env = sandbox.Confinement(flash, interpreter, code_dirs=[paths.LIB]).wrap(argv, {})
    try:
        return subprocess.run(argv, env=env, cwd=str(flash), capture_output=True, text=True, timeout=timeout,
                              umask=0o077)
    except subprocess.TimeoutExpired:
        raise UpyhubError("MicroPython did not finish writing %s within %d s" % (flash, timeout))


def write_flash(flash, *, hostname, device_id, ca_pem, port, device_key=None, gateway="127.0.0.1",
                auth="sas", x509=None, **settings):
    """config.json, secrets.json (only when there is a key, mode 0600) and the active root set. Returns the config."""
    flash = pathlib.Path(flash)
    flash.mkdir(parents=True, exist_ok=True)
    files.check_flash(flash)
    cfg = {"hostname": hostname, "device_id": device_id, "gateway": gateway, "port": port, "auth": auth,
           "token_ttl": 3600, "keepalive": 60, "telemetry_interval": 10, "certs_dir": "certs"}
    if x509:
        cfg["x509"] = x509
    cfg.update(settings)
    fl = files.Flash(flash)
    fl.write_atomic("config.json", json.dumps(cfg, indent=1).encode())
    if device_key is not None:
        fl.write_atomic("secrets.json", json.dumps({"device_key": device_key}).encode(), private=True)
    certs.install_local(flash, ca_pem if isinstance(ca_pem, bytes) else ca_pem.encode())
    return cfg


def read_config(flash):
    """config.json of a flash folder (read without following links), or None when there is none."""
    raw = files.Flash(flash).read("config.json")
    if raw is None:
        return None
    try:
        cfg = json.loads(raw)
    except ValueError:
        cfg = None
    if not isinstance(cfg, dict):
        raise UsageError("config.json in %s is not a JSON object" % flash)
    return cfg


def image(flash, source=False, tree=None):
    """(folder holding boot.py and main.py, MICROPYPATH list) for a flash folder."""
    flash = pathlib.Path(flash)
    if (flash / "main.py").is_file() and (flash / "lib").is_dir():
        return flash, [str(flash / "lib")]
    if source:
        return paths.FIRMWARE, [str(paths.FIRMWARE), str(paths.BOARDS / "unix"), str(paths.LIB), str(paths.UMQTT)]
    tree = pathlib.Path(tree or os.environ.get(TREE_ENV) or MPY)
    if not (tree / "main.py").is_file():
        raise UsageError("%s has no firmware: run `make setup` (or `upyhub build --board unix --out %s`)"
                         % (tree, tree))
    return tree, [str(tree / "lib")]


def hub_ports(cfg):
    """The TCP ports the firmware may connect to, from config.json: the hub's MQTT port (8883 by default),
    DPS's when it registers through DPS (8883), the token service's when it gets its tokens there (443)."""
    if not isinstance(cfg, dict):
        return []
    ports = [cfg.get("port", 8883)]
    for section, default in (("dps", 8883), ("token_service", 443)):
        if isinstance(cfg.get(section), dict):
            ports.append(cfg[section].get("port", default))
    return [p for p in ports if isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536]


def _resolve(cfg, flash):
    """{hostname: address} when the firmware will look the hub up by name (no gateway in config.json)."""
    if cfg.get("gateway") or not isinstance(cfg.get("hostname"), str):
        return {}
    host = cfg["hostname"]
    try:
        return {host: socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]}
    except (OSError, UnicodeError) as exc:
        raise UpyhubError("cannot look up the hub hostname %s from %s/config.json: %s; set \"gateway\" there to "
                          "the hub's address" % (host, flash, errors.network_reason(exc)))


def _inside(flash, dirs):
    """({host folder: its path inside the board}, [folders to mount read-only]): folders in the flash keep
    their place, the others (a firmware tree, stand-ins) are mounted at /.code0, /.code1, ..."""
    inside, mounts = {}, []
    for d in map(str, dirs):
        if d in inside:
            continue
        if d == str(flash) or d.startswith(str(flash) + "/"):
            inside[d] = "/" + os.path.relpath(d, flash) if d != str(flash) else ""
        else:
            inside[d] = "/.code%d" % len(mounts)
            mounts.append(d)
    return inside, mounts


def command(flash, *, source=False, heapsize=None, tree=None, path_extra=(), executable=None, confine=True):
    """(argv, env, description) that run the firmware on `flash`, confined unless confine=False."""
    flash = pathlib.Path(flash).resolve()
    files.check_flash(flash)
    cfg = read_config(flash)
    if cfg is None:
        raise UsageError("no config.json in %s: not a provisioned flash folder" % flash)
    top, path = image(flash, source, tree)
    interpreter = str(executable) if executable else paths.micropython()
    inside, code = _inside(flash, list(path_extra) + [top] + path)
    # sys.path as a board has it (['', '.frozen', '/lib']): what path_extra adds, frozen modules (in a port
    # built with them, e.g. build/micropython-32-frozen), then the firmware's lib
    sys_path = [inside[str(p)] for p in path_extra] + [".frozen"] + [inside[str(p)] for p in path]
    boot = mount_code(flash, code, sys_path) + _BOOT % {
        "hosts": _resolve(cfg, flash), "boot": inside[str(top)] + "/boot.py", "main": inside[str(top)] + "/main.py"}
    argv = [interpreter]
    if heapsize:
        argv += ["-X", "heapsize=%s" % heapsize]
    argv += ["-c", boot]
    env = {"MICROPYPATH": ""}
    if not confine:
        return argv, dict(env, **{k: os.environ[k] for k in sandbox.PASS_ENV if k in os.environ}), sandbox.UNCONFINED
    box = sandbox.Confinement(flash, interpreter, code_dirs=code, tcp_ports=hub_ports(cfg))
    argv, env = box.wrap(argv, env)
    return argv, env, box.describe()


def start(flash, *, source=False, heapsize=None, tree=None, path_extra=(), stdout=subprocess.PIPE, confine=True,
          executable=None, **kw):
    """Boot the firmware on `flash` (confined); a Popen whose stdout is the device's log."""
    argv, env, _ = command(flash, source=source, heapsize=heapsize, tree=tree, path_extra=path_extra,
                           executable=executable, confine=confine)
    return subprocess.Popen(argv, env=env, cwd=str(pathlib.Path(flash).resolve()), stdout=stdout,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, umask=0o077, **kw)


def hub_info(data_dir):
    """(hostname, host, mqtt_port, service client, CA PEM) of a running local hub (its data folder)."""
    from upyhub.hub import client, pki as pki_mod

    data = pathlib.Path(data_dir)
    serve = data / "serve.json"
    if not serve.is_file():
        raise UpyhubError("no local hub is running with data folder %s: start it with "
                          "`upyhub hub serve --detach --data %s`" % (data, data))
    info = json.loads(serve.read_text())
    service = client.local(data, "iothubowner")
    pki = pki_mod.PKI(data)
    return pki.hostname, service.host, info["mqtt_port"], service, pki.ca_path().read_bytes()


def provision_local(flash, device_id, hub_data, **settings):
    """Register device_id on the running local hub (or reuse it) and write its flash folder."""
    from upyhub import sas
    from upyhub.hub.client import ServiceError

    sas.check_device_id(device_id)
    hostname, host, port, client, ca = hub_info(hub_data)
    try:
        try:
            doc = client.get_device(device_id)
        except ServiceError as e:
            if getattr(e, "status", None) != 404:
                raise
            doc = client.put_device(device_id)
    except ServiceError as e:
        raise UpyhubError("the local hub refused device %s: HTTP %s %s" % (device_id, e.status, e.message[:200]))
    except OSError as e:
        raise UpyhubError("cannot reach the local hub's service API at %s: %s" % (host, errors.network_reason(e)))
    keys = doc.get("authentication", {}).get("symmetricKey") or {}
    if not keys.get("primaryKey"):
        raise UsageError("device %s is not a SAS device on this hub" % device_id)
    return write_flash(flash, hostname=hostname, device_id=device_id, device_key=keys["primaryKey"], ca_pem=ca,
                       port=port, gateway=host, **settings)


def run(flash, *, heapsize=None, source=False, tree=None, restarts=True, out=None, confine=True):
    """Run the firmware in the foreground like a board: a reset (exit 0) boots it again.
    Returns the exit status of the last run; Ctrl-C stops it cleanly."""
    import sys

    out = out or sys.stdout
    first = True
    while True:
        argv, env, how = command(flash, heapsize=heapsize, source=source, tree=tree, confine=confine)
        if first:
            out.write("sim: confinement: %s\n" % how)
            first = False
        # own session: Ctrl-C reaches this process only, which then stops the firmware quietly
        proc = subprocess.Popen(argv, env=env, cwd=str(pathlib.Path(flash).resolve()), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, umask=0o077,
                                start_new_session=True)
        try:
            for line in proc.stdout:
                out.write(line)
                out.flush()
            code = proc.wait()
        except KeyboardInterrupt:
            stop(proc)
            raise
        if code != 0 or not restarts:
            return code
        out.write("sim: board reset: booting again\n")


def stop(proc, timeout=10):
    """SIGTERM, then SIGKILL after `timeout` s; None or an ended process is fine."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PICO_HANDSHAKE_S = 120  # the TLS deadline a hub serving the emulated Pico should give (hub serve --handshake-timeout)


def run_pico(image, *, device_id=None, hub_data=".upyhub", link=None, out=None, timeout=180):
    """The emulated Pico (upyhub.pico: the rp2 image on rp2040js) with the file `image` as its flash, its PPP modem
    reaching the local hub of `hub_data` (MQTT and DPS, at 10.0.2.2 as the board sees them) and nothing else.
    With a device id and a board that holds no config.json yet, it is provisioned first, through its serial port,
    by `upyhub provision` (the hub registers it; the board gets its key, settings and roots); then it boots and
    its console is shown until Ctrl-C. `link`: a symlink to its serial port. Returns 0."""
    import sys

    from upyhub import mpr, pico, ppplink, provision

    out = out or sys.stdout
    hostname, host, mqtt_port, service, _ = hub_info(hub_data)
    info = json.loads((pathlib.Path(hub_data) / "serve.json").read_text())
    ports = [p for p in (mqtt_port, info.get("dps_port")) if p]
    board = pico.Pico(image, forward={p: (host, p) for p in ports})
    try:
        port = board.start()
        if link:
            tmp = str(link) + ".tmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(port, tmp)
            os.replace(tmp, link)
        out.write("sim: emulated Pico on %s%s; flash %s\n" % (port, " (%s)" % link if link else "", image))
        out.write("sim: its network: PPP to a private namespace that reaches only the hub's ports %s (at %s)\n"
                  % (", ".join(map(str, ports)), ppplink.HOST_ALIAS))
        deadline = info.get("handshake_timeout", 5)
        if deadline < PICO_HANDSHAKE_S:
            out.write("sim: warning: the hub drops a TLS handshake after %g s; the emulated Pico needs 5-30 s of wall "
                      "time for one (1.6 s of its own): serve the hub with --handshake-timeout %d\n"
                      % (deadline, PICO_HANDSHAKE_S))
        start = 0
        if device_id:
            if mpr.Board(port, timeout).snapshot().get("config") is None:
                local = provision.local_hub(hub_data)
                opts = provision.Options(
                    port, device_id, local["hub_cs"], board="rp2_pico_ppp", hub_ca=local["hub_ca"],
                    gateway=local["gateway"], https_port=local["https_port"], mqtt_port=local["mqtt_port"],
                    roots=pathlib.Path(local["hub_ca"]).read_bytes(), device_gateway=ppplink.HOST_ALIAS,
                    ntp=[ppplink.HOST_ALIAS], timeout=timeout, reset=False)
                summary = provision.provision(opts, say=lambda m: out.write("sim: provision: %s\n" % m))
                out.write("sim: provisioned %s for device %s (hub: %s)\n" % (image, device_id, summary["hub"]))
            while not board.events.empty():
                board.events.get()
            mpr.Board(port, timeout).run("reset")  # it boots main.py (mpremote's sessions stopped it)
            start = board.wait_event("boot", 30)["console"]  # its log, not what the sessions before it printed
        out.flush()
        board.follow(out, start)  # from here on, what the board prints
        while board.proc.poll() is None:
            time.sleep(0.5)
        raise UpyhubError("the emulated Pico stopped%s" % board._died())
    finally:
        board.close()
        if link and os.path.islink(link) and os.readlink(link) == board.port:
            os.unlink(link)
