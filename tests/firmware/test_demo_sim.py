"""`make demo` and `upyhub sim`: the real hub, the real firmware, stopped cleanly by Ctrl-C."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fwtools import ROOT

pytestmark = pytest.mark.slow
UPYHUB = str(ROOT / ".venv" / "bin" / "upyhub")


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, even under a runner that ignores it


def wait_line(proc, lines, pattern, timeout=120):
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if pattern in line:
            return line
        assert time.monotonic() < deadline, "\n".join(lines)
    raise AssertionError("exited before %r:\n%s" % (pattern, "\n".join(lines)))


def test_demo_runs_and_stops_by_itself(fw_tree):
    p = subprocess.run([sys.executable, "-m", "upyhub.demo", "--messages", "4", "--interval", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, UPYHUB_TREE=str(fw_tree)))
    out = p.stdout
    assert p.returncode == 0, out + p.stderr
    assert "device| iothub: connected to localhub.azure-devices.net as demo-device-1" in out
    assert out.count("hub   | telemetry from demo-device-1") >= 4
    assert "service: direct method ping -> 200" in out
    reported = json.loads(out.split("twin reported: ", 1)[1].splitlines()[0])
    assert reported["telemetry_interval"] == 2
    assert out.rstrip().endswith("demo: stopped (device and hub)")
    assert "SharedAccessSignature" not in out + p.stderr and "Traceback" not in out + p.stderr


def test_demo_ctrl_c(fw_tree):
    proc = subprocess.Popen([sys.executable, "-m", "upyhub.demo"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint,
                            env=dict(os.environ, UPYHUB_TREE=str(fw_tree)))
    lines = []
    try:
        wait_line(proc, lines, "hub   | telemetry from demo-device-1")
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "\n".join(lines) + "\n" + rest
    assert proc.returncode == 0, out
    assert "demo: stopped (device and hub)" in out and "Traceback" not in out
    assert "I stopped" in out  # the hub logged its own clean shutdown


def test_sim_provisions_from_running_hub_and_runs(hub, tmp_path, fw_tree):  # noqa: F811
    flash = tmp_path / "flash"
    env = dict(os.environ, UPYHUB_TREE=str(fw_tree))
    proc = subprocess.Popen([UPYHUB, "sim", "--flash", str(flash), "--device", "sim-1", "--hub", str(hub.data_dir),
                             "--telemetry-interval", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_default_sigint)
    lines = []
    try:
        wait_line(proc, lines, "sim: provisioned")
        wait_line(proc, lines, "iothub: connected to %s as sim-1" % hub.hostname)
        deadline = time.monotonic() + 60
        while not hub.service.telemetry("sim-1"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert rest.rstrip().endswith("sim: stopped")
    cfg = json.loads((flash / "config.json").read_text())
    assert cfg["device_id"] == "sim-1" and cfg["port"] == hub.mqtt_port
    assert oct((flash / "secrets.json").stat().st_mode & 0o777) == "0o600"
    # the same folder again, for another device id: refused in one line
    p = subprocess.run([UPYHUB, "sim", "--flash", str(flash), "--device", "other"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "provisioned for device 'sim-1'" in p.stderr
