"""Operating the hub: one hub per data folder, a prompt stop whatever clients were doing, serve --detach
and stop, and no orphaned hub (or board) when `make demo` is killed."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from hubdev import Device, token, wait_for
from upyhub import paths

pytestmark = pytest.mark.slow


def hub_cli(data, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "upyhub", "hub", *args, "--data", str(data)],
                          capture_output=True, text=True, timeout=timeout)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by a dead parent's successor) counts as gone
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_one_hub_per_data_folder(hub):
    out = hub_cli(hub.data_dir, "serve", "--port", "0", "--https-port", "0", "--bind", "127.0.0.1")
    assert out.returncode == 1, out
    assert out.stderr.count("\n") == 1 and "already serving" in out.stderr, out.stderr
    assert "pid %d" % hub.proc.pid in out.stderr and "MQTT port %d" % hub.mqtt_port in out.stderr
    assert json.loads((hub.data_dir / "serve.json").read_text())["pid"] == hub.proc.pid  # not removed by it
    assert hub.running() and hub.service.list_devices() == []


def test_stop_is_prompt_whatever_clients_do(hub):
    key = hub.add_device("busy")
    monitor = subprocess.Popen([sys.executable, "-m", "upyhub", "hub", "monitor", "--data", str(hub.data_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "following telemetry" in monitor.stderr.readline()
    time.sleep(0.5)  # its long-poll is now waiting in the hub
    monitor.send_signal(signal.SIGINT)  # an interrupted monitor leaves that request behind
    assert monitor.wait(30) == 130
    with Device(hub, "busy", token(hub, "busy", key)) as d:
        assert d.wait_connack() == 0
        d.subscribe("$iothub/methods/POST/#")
        t0 = time.monotonic()
        hub.proc.send_signal(signal.SIGINT)
        hub.proc.wait(60)
        took = time.monotonic() - t0
    hub.proc = None
    assert took < 5, "the hub took %.1f s to stop" % took  # was ~18 s while a long-poll was pending
    assert hub.log().rstrip().endswith("stopped")


def test_detach_then_stop(tmp_path):
    d = tmp_path / "hub"
    assert hub_cli(d, "init").returncode == 0
    out = hub_cli(d, "serve", "--detach", "--port", "0", "--https-port", "0", "--bind", "127.0.0.1")
    assert out.returncode == 0, out.stderr
    pid = json.loads((d / "serve.json").read_text())["pid"]
    try:
        assert "pid %d" % pid in out.stdout and "hub.log" in out.stdout
        # the very next commands find it running
        assert hub_cli(d, "device", "add", "det1").returncode == 0
        twin = hub_cli(d, "twin", "show", "det1")
        assert twin.returncode == 0 and json.loads(twin.stdout)["deviceId"] == "det1"
        again = hub_cli(d, "serve", "--detach", "--port", "0", "--https-port", "0")
        assert again.returncode == 1 and "already serving" in again.stderr
        stop = hub_cli(d, "stop")
        assert stop.returncode == 0 and "pid %d" % pid in stop.stdout
        assert not alive(pid) and not (d / "serve.json").exists()
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert hub_cli(d, "stop").returncode == 1
    down = hub_cli(d, "twin", "show", "det1")
    assert down.returncode == 1 and "no local hub is running" in down.stderr


def processes_in(folder):
    """pids whose working directory is folder (the demo's board runs in its flash folder)."""
    found = []
    for p in pathlib.Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if pathlib.Path(os.readlink(p / "cwd")) == folder and alive(int(p.name)):
                    found.append(int(p.name))
            except OSError:
                continue
    return found


def test_killed_demo_leaves_no_hub_or_board(tmp_path):
    demo_hub = paths.BUILD / "demo" / "hub"
    flash = (paths.BUILD / "demo" / "flash").resolve()
    demo = subprocess.Popen([sys.executable, "-m", "upyhub.demo", "--interval", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path))
    try:
        for line in demo.stdout:
            if "running the firmware" in line:
                break
        else:
            pytest.fail("the demo did not boot its board")
        hub_pid = json.loads((demo_hub / "serve.json").read_text())["pid"]
        board = wait_for(lambda: processes_in(flash), what="the demo's board process")
        assert alive(hub_pid)
        demo.kill()  # SIGKILL: no cleanup code of the demo runs
        demo.wait(30)
        wait_for(lambda: not alive(hub_pid), what="the demo's hub to end", timeout=60)
        wait_for(lambda: not any(alive(p) for p in board), what="the demo's board to end", timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
