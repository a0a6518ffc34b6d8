"""Run a test file inside a private network and mount namespace (root and unshare(1) needed).

The official Azure SDKs use fixed ports (8883, 443) and resolve Azure hostnames; inside the namespace
the hub's ports are private (no clash with other hubs on this machine) and a private /etc/hosts maps
the hostnames to loopback addresses. The inner pytest sees UPYHUB_NETNS=1.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

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


def run_in_netns(tmp_path, hosts, test_file, passed):
    """Run HERE/test_file in a fresh namespace whose /etc/hosts is `hosts`; assert `passed` tests passed."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private network namespace")
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(hosts)
    out = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private", "--",
                          sys.executable, "-c", INNER, str(hosts_file), str(HERE / test_file)],
                         capture_output=True, text=True, timeout=600, cwd=str(ROOT),
                         env=dict(os.environ, UPYHUB_NETNS="1"))
    tail = (out.stdout + out.stderr)[-4000:]
    assert out.returncode == 0, tail
    assert "%d passed" % passed in out.stdout, tail
