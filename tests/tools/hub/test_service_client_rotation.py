"""The hub's own tools keep working when the hub switches to a new CA (rotate-ca --activate)."""
import ssl
import subprocess
import sys

import pytest

from upyhub.hub import client
from upyhub.hub.client import ServiceClient


def upyhub(*args):
    return subprocess.run([sys.executable, "-m", "upyhub", *args], capture_output=True, text=True, timeout=120)


def test_local_client_follows_the_active_ca_and_a_pinned_one_does_not(hub):
    hub.add_device("rot-tools")
    following = client.local(hub.data_dir, "service")
    pinned_to_ca1 = ServiceClient(hub.connection_string("service"), hub.ca_path, host=hub.host, port=hub.https_port)
    assert following.get_twin("rot-tools")["deviceId"] == "rot-tools"
    assert pinned_to_ca1.get_twin("rot-tools")["deviceId"] == "rot-tools"

    assert upyhub("hub", "rotate-ca", "--data", str(hub.data_dir)).returncode == 0
    assert upyhub("hub", "rotate-ca", "--data", str(hub.data_dir), "--activate").returncode == 0

    assert following.get_twin("rot-tools")["deviceId"] == "rot-tools"
    with pytest.raises(ssl.SSLCertVerificationError):  # the switch really happened
        pinned_to_ca1.get_twin("rot-tools")
    shown = upyhub("hub", "twin", "show", "rot-tools", "--data", str(hub.data_dir))
    assert shown.returncode == 0 and '"rot-tools"' in shown.stdout
