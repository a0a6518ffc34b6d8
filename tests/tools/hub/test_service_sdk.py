"""The official service SDK (azure-iot-hub 2.7, IoTHubRegistryManager) against the local hub, unchanged.

The SDK only speaks to https://{HostName} on port 443, and hub hostnames do not resolve here, so the
checks (netns_service_sdk.py) run in a private network and mount namespace: its own loopback, its own
ports 443 and 8883 (no clash with other hubs on this machine), and a private /etc/hosts that maps the
hub hostname to 127.0.0.1.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]

INNER = r"""
import fcntl, socket, struct, subprocess, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS: loopback up
subprocess.run(["mount", "--bind", sys.argv[1], "/etc/hosts"], check=True)
sys.exit(subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                         sys.argv[2]]).returncode)
"""


def test_service_sdk_in_a_private_network(tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private network namespace")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost localhub.azure-devices.net\n")
    out = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "--",
                          sys.executable, "-c", INNER, str(hosts), str(HERE / "netns_service_sdk.py")],
                         capture_output=True, text=True, timeout=600, cwd=str(ROOT),
                         env=dict(os.environ, UPYHUB_NETNS="1"))
    tail = (out.stdout + out.stderr)[-4000:]
    assert out.returncode == 0, tail
    assert "4 passed" in out.stdout, tail
