"""The official device SDK's ProvisioningDeviceClient against the local DPS, then its IoTHubDeviceClient
against the hub it was assigned, unchanged (netns_dps_sdk.py).

The SDK always connects to port 8883 of the provisioning host and of the hub, so the checks run in a
private network and mount namespace (netns.py) whose /etc/hosts maps the DPS hostname to 127.0.0.2 and
the hub hostname to 127.0.0.1: the hub serves DPS on 127.0.0.2:8883 next to its MQTT endpoint on
127.0.0.1:8883.
"""
import pytest

from netns import run_in_netns

pytestmark = pytest.mark.slow


def test_provisioning_sdk_in_a_private_network(tmp_path):
    run_in_netns(tmp_path, "127.0.0.1 localhost localhub.azure-devices.net\n"
                           "127.0.0.2 global.azure-devices-provisioning.net\n", "netns_dps_sdk.py", 3)
