"""The local hub for the benchmarks: `upyhub hub serve` in its own session, on loopback."""
import json
import subprocess
import sys
import time


def start(data, port=0, what="bench", https_port=0, extra=()):
    """Init `data` (once) and serve it (`extra`: more `hub serve` options); returns (process, serve.json as a
    dict). Exits with the hub's last lines if it does not come up (a busy port, usually)."""
    if not (data / "pki").exists():
        subprocess.run([sys.executable, "-m", "upyhub", "hub", "init", "--data", str(data)], check=True,
                       capture_output=True, timeout=120)
    (data / "serve.json").unlink(missing_ok=True)
    log = open(data.parent / ("%s-hub.log" % data.name), "a")
    proc = subprocess.Popen([sys.executable, "-m", "upyhub", "hub", "serve", "--data", str(data), "--bind",
                             "127.0.0.1", "--port", str(port), "--https-port", str(https_port)] + list(extra), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while not (data / "serve.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("%s: the local hub did not start on port %d:\n%s"
                             % (what, port, (data.parent / ("%s-hub.log" % data.name)).read_text()[-800:]))
        time.sleep(0.1)
    return proc, json.loads((data / "serve.json").read_text())
