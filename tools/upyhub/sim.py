"""Simulated boards: the real firmware on the MicroPython unix port, a folder as its flash.

    write_flash(flash, hostname=..., device_id=..., device_key=..., ca_pem=..., port=..., gateway="127.0.0.1")
    proc = start(flash)             # subprocess.Popen, stdout = the device's log lines
    argv, env = command(flash)      # what start() runs

The firmware comes from the flash folder when it holds a board image (main.py + lib/), else from
the compiled tree `build/mpy` (`upyhub build --board unix --out build/mpy`), or with `source=True`
from the checkout's .py files (firmware/, boards/unix/, lib/).
"""
import json
import os
import pathlib
import subprocess

from upyhub import certs, files, paths
from upyhub.errors import UsageError

MPY = paths.BUILD / "mpy"
# UPYHUB_TREE: another compiled tree to run (tests use a private build)
TREE_ENV = "UPYHUB_TREE"


def write_flash(flash, *, hostname, device_id, ca_pem, port, device_key=None, gateway="127.0.0.1",
                auth="sas", x509=None, **settings):
    """config.json, secrets.json (only when there is a key) and the active root set. Returns the config."""
    flash = pathlib.Path(flash)
    flash.mkdir(parents=True, exist_ok=True)
    cfg = {"hostname": hostname, "device_id": device_id, "gateway": gateway, "port": port, "auth": auth,
           "token_ttl": 3600, "keepalive": 60, "telemetry_interval": 10, "certs_dir": "certs"}
    if x509:
        cfg["x509"] = x509
    cfg.update(settings)
    files.write_atomic(flash / "config.json", json.dumps(cfg, indent=1).encode())
    if device_key is not None:
        secrets = flash / "secrets.json"
        files.write_atomic(secrets, json.dumps({"device_key": device_key}).encode(), private=True)
    certs.install_local(flash, ca_pem if isinstance(ca_pem, bytes) else ca_pem.encode())
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


def command(flash, *, source=False, heapsize=None, tree=None, path_extra=()):
    flash = pathlib.Path(flash).resolve()
    if not (flash / "config.json").is_file():
        raise UsageError("no config.json in %s: not a provisioned flash folder" % flash)
    top, path = image(flash, source, tree)
    # A board runs boot.py then main.py from its flash: do the same, in one interpreter.
    code = "exec(open(%r).read())\nexec(open(%r).read())" % (str(top / "boot.py"), str(top / "main.py"))
    argv = [paths.micropython()]
    if heapsize:
        argv += ["-X", "heapsize=%s" % heapsize]
    argv += ["-c", code]
    env = dict(os.environ, MICROPYPATH=os.pathsep.join([str(p) for p in path_extra] + path), UPYHUB_FLASH=str(flash))
    return argv, env


def start(flash, *, source=False, heapsize=None, tree=None, path_extra=(), stdout=subprocess.PIPE, **kw):
    argv, env = command(flash, source=source, heapsize=heapsize, tree=tree, path_extra=path_extra)
    return subprocess.Popen(argv, env=env, cwd=str(pathlib.Path(flash).resolve()), stdout=stdout,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, **kw)


def hub_info(data_dir):
    """(hostname, host, mqtt_port, service client, CA PEM) of a running local hub (its data folder)."""
    from upyhub.hub import client, pki as pki_mod

    data = pathlib.Path(data_dir)
    serve = data / "serve.json"
    if not serve.is_file():
        raise UsageError("no local hub is running with data folder %s: start it with `upyhub hub serve --data %s`"
                         % (data, data))
    info = json.loads(serve.read_text())
    service = client.local(data, "iothubowner")
    pki = pki_mod.PKI(data)
    return pki.hostname, service.host, info["mqtt_port"], service, pki.ca_path().read_bytes()


def provision_local(flash, device_id, hub_data, **settings):
    """Register device_id on the running local hub (or reuse it) and write its flash folder."""
    from upyhub.hub.client import ServiceError

    hostname, host, port, client, ca = hub_info(hub_data)
    try:
        doc = client.get_device(device_id)
    except ServiceError as e:
        if getattr(e, "status", None) != 404:
            raise UsageError("the hub refused to look up %s: %s" % (device_id, e))
        doc = client.put_device(device_id)
    keys = doc.get("authentication", {}).get("symmetricKey") or {}
    if not keys.get("primaryKey"):
        raise UsageError("device %s is not a SAS device on this hub" % device_id)
    return write_flash(flash, hostname=hostname, device_id=device_id, device_key=keys["primaryKey"], ca_pem=ca,
                       port=port, gateway=host, **settings)


def run(flash, *, heapsize=None, source=False, tree=None, restarts=True, out=None):
    """Run the firmware in the foreground like a board: a reset (exit 0) boots it again.
    Returns the exit status of the last run; Ctrl-C stops it cleanly."""
    import sys

    out = out or sys.stdout
    while True:
        # own session: Ctrl-C reaches this process only, which then stops the firmware quietly
        proc = start(flash, heapsize=heapsize, source=source, tree=tree, stdout=subprocess.PIPE,
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
