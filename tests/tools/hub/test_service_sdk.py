"""The official service SDK (azure-iot-hub 2.7, IoTHubRegistryManager) against the local hub, unchanged.

The SDK only speaks to https://{HostName} on port 443, and hub hostnames do not resolve here, so the
checks (netns_service_sdk.py) run in a private network and mount namespace (netns.py): its own
loopback, its own ports 443 and 8883 (no clash with other hubs on this machine), and a private
/etc/hosts that maps the hub hostname to 127.0.0.1.
"""
import pytest

from netns import run_in_netns

pytestmark = pytest.mark.slow


def test_service_sdk_in_a_private_network(tmp_path):
    run_in_netns(tmp_path, "127.0.0.1 localhost localhub.azure-devices.net\n", "netns_service_sdk.py", 4)
