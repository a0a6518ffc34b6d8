"""`upyhub sim --board rp2`, as the README runs it: the emulated Pico provisioned through its serial port by
`upyhub provision`, its console on stdout until SIGTERM, nothing left running afterwards; bad input refused."""
import os
import signal
import subprocess
import sys
import time

import pytest

from picosession import slow_hub, upyhub, wait_until

pytestmark = pytest.mark.slow


def test_sim_rp2_provisions_boots_and_stops_cleanly(tmp_path, pico_network):
    hub = slow_hub(tmp_path / "hub")
    link = tmp_path / "pico.port"
    proc = subprocess.Popen([sys.executable, "-m", "upyhub", "sim", "--board", "rp2", "--flash", str(tmp_path / "p.img"),
                             "--device", "sim-pico", "--hub", str(hub.data_dir), "--link", str(link)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = []
    try:
        import threading

        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
        wait_until(lambda: any("iothub: connected to %s as sim-pico" % hub.hostname in x for x in lines),
                   timeout=300, what="the sim's board connected: %s" % lines[-20:])
        assert os.path.realpath(link).startswith("/dev/pts/")
        out = "".join(lines)
        assert "sim: provisioned" in out and "PPP to a private namespace" in out
        assert "raw REPL" not in out.split("sim: provisioned")[1]  # provisioning's traffic is not the board's log
        wait_until(lambda: hub.service.telemetry("sim-pico"), what="telemetry from the sim")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        hub.stop()
    assert lines[-1].strip() == "sim: stopped"
    assert not link.exists()
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "p.img")], capture_output=True, text=True).stdout
    assert left == "", "processes outlived the sim: %s" % left


def test_sim_rp2_refuses_what_is_not_a_flash_image(tmp_path):
    (tmp_path / "small.img").write_bytes(b"\xff" * 1000)
    for args, says in ((["--flash", str(tmp_path / "small.img")], "not a Pico's 2097152-byte flash image"),
                       (["--flash", str(tmp_path)], "is not a flash image file"),
                       (["--flash", str(tmp_path / "x.img"), "--heapsize", "64K"], "are for the unix board")):
        p = upyhub("sim", "--board", "rp2", *args)
        assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
