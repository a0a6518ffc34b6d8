"""Run only inside a private network namespace (test_dps_sdk.py starts it): the official device SDK's
`ProvisioningDeviceClient` (azure-iot-device 2.14) registers with the local DPS, then its
`IoTHubDeviceClient` connects to the hub it was assigned, both unchanged, exactly as on Azure.

The SDK always connects to port 8883 of the provisioning host and of the assigned hub, and checks each
certificate for that name. So here the private /etc/hosts maps global.azure-devices-provisioning.net to
127.0.0.2 and localhub.azure-devices.net to 127.0.0.1; the hub serves MQTT on 127.0.0.1:8883 and its DPS
on 127.0.0.2:8883 (`serve --dps-port 8883 --dps-bind 127.0.0.2`). The only SDK option used is
server_verification_cert (the hub CA), as for any private root.
"""
import json
import os

import pytest

from certhelpers import make_cert
from hubdev import wait_for
from hubfixture import LocalHub
from upyhub import sas
from upyhub.hub import dps, pki

pytestmark = [pytest.mark.skipif(os.environ.get("UPYHUB_NETNS") != "1", reason="runs inside test_dps_sdk's netns"),
              pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")]
DPS_HOST = "global.azure-devices-provisioning.net"


@pytest.fixture(scope="module")
def nhub(tmp_path_factory):
    h = LocalHub(tmp_path_factory.mktemp("dpshub"), mqtt_port=8883, https_port=8443, dps_port=8883,
                 dps_host="127.0.0.2").start()
    yield h
    h.stop()


def connect_assigned(hub, result, **credential):
    """The SDK's device client on the assigned hub: one telemetry message, seen by the service."""
    from azure.iot.device import IoTHubDeviceClient, Message
    state = result.registration_state
    if "symmetric_key" in credential:
        client = IoTHubDeviceClient.create_from_symmetric_key(
            hostname=state.assigned_hub, device_id=state.device_id, server_verification_cert=hub.ca_pem.decode(),
            **credential)
    else:
        client = IoTHubDeviceClient.create_from_x509_certificate(
            hostname=state.assigned_hub, device_id=state.device_id, server_verification_cert=hub.ca_pem.decode(),
            **credential)
    client.connect()
    try:
        client.send_message(Message("hello from " + state.device_id))
        rows = wait_for(lambda: hub.service.telemetry(device=state.device_id), what="telemetry")
        assert rows[-1]["body"] == "hello from " + state.device_id
    finally:
        client.shutdown()


def register_symmetric(hub, registration_id, key, payload=None):
    from azure.iot.device import ProvisioningDeviceClient
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=DPS_HOST, registration_id=registration_id, id_scope=hub.id_scope, symmetric_key=key,
        server_verification_cert=hub.ca_pem.decode())
    client.provisioning_payload = payload
    return client.register()


def test_symmetric_key_individual(nhub):
    key = dps.create_enrollment(nhub.data_dir, "sdk-one")["attestation"]["symmetricKey"]["primaryKey"]
    result = register_symmetric(nhub, "sdk-one", key, {"firmware": "1.2.3"})
    assert result.status == "assigned"
    state = result.registration_state
    assert state.assigned_hub == nhub.hostname and state.device_id == "sdk-one"
    assert state.sub_status == "initialAssignment" and json.loads(state.response_payload) == {"firmware": "1.2.3"}
    connect_assigned(nhub, result, symmetric_key=key)


def test_symmetric_key_group_and_refusals(nhub):
    from azure.iot.device.exceptions import ClientError
    group_key = dps.create_enrollment_group(nhub.data_dir, "sdk-fleet")["attestation"]["symmetricKey"]["primaryKey"]
    for reg_id in ("sdk-fleet-1", "sdk-fleet-2"):
        device_key = sas.derive_device_key(group_key, reg_id)  # az iot dps compute-device-key
        result = register_symmetric(nhub, reg_id, device_key)
        assert result.status == "assigned" and result.registration_state.device_id == reg_id
        connect_assigned(nhub, result, symmetric_key=device_key)
    with pytest.raises(ClientError) as err:
        register_symmetric(nhub, "sdk-fleet-3", group_key)  # the group key itself is not a device key
    assert "401" in str(err.value.__cause__)


def register_x509(hub, registration_id, files):
    from azure.iot.device import ProvisioningDeviceClient, X509
    x = X509(str(files[0]), str(files[1]))
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=DPS_HOST, registration_id=registration_id, id_scope=hub.id_scope, x509=x,
        server_verification_cert=hub.ca_pem.decode())
    return client.register(), x


def test_x509_individual_and_group(nhub, tmp_path):
    own = make_cert("sdk-x509", ca=False)
    files = pki.PKI.write_pair(own.cert, own.key, tmp_path, "sdk-x509")
    dps.create_enrollment(nhub.data_dir, "sdk-x509", attestation="x509",
                          primary_thumbprint=pki.thumbprints(own.der)[0])
    result, x = register_x509(nhub, "sdk-x509", files)
    assert result.status == "assigned" and result.registration_state.device_id == "sdk-x509"
    connect_assigned(nhub, result, x509=x)

    root = make_cert("sdk factory root")
    dps.create_enrollment_group(nhub.data_dir, "sdk-x509-group", attestation="x509", ca_certs=[root.cert])
    member = make_cert("sdk-x509-member", ca=False, issuer=root)
    files = pki.PKI.write_pair(member.cert, member.key, tmp_path, "sdk-x509-member")
    result, x = register_x509(nhub, "sdk-x509-member", files)
    assert result.status == "assigned" and result.registration_state.device_id == "sdk-x509-member"
    connect_assigned(nhub, result, x509=x)
