"""The official Azure IoT device SDK (azure-iot-device 2.14) against the local hub, unchanged.

The SDK always connects to port 8883, so this module's hub listens there (waiting for the port if another
hub holds it). It reaches the hub as gateway_hostname 127.0.0.1 with the hub CA as server_verification_cert.
"""
import json
import queue
import subprocess
import sys
import time

import pytest

from hubfixture import LocalHub
from hubdev import wait_for
from tokendev import TokenServiceProc
from upyhub.hub import tokenservice

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")]
SDK_PORT = 8883
PORT_WAIT = 180


@pytest.fixture(scope="module")
def sdk_hub(tmp_path_factory):
    h = LocalHub(tmp_path_factory.mktemp("sdkhub"), mqtt_port=SDK_PORT)
    deadline = time.monotonic() + PORT_WAIT
    while True:
        try:
            h.start()
            break
        except RuntimeError as e:
            if "cannot listen" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)  # another hub holds 8883 for a while: wait for it
    yield h
    h.stop()


def exercise(hub, client, device_id):
    """Telemetry, twin get/patch, desired update, C2D and a direct method, each checked on the service side."""
    from azure.iot.device import Message, MethodResponse

    c2d, desired, methods = queue.Queue(), queue.Queue(), queue.Queue()
    client.on_message_received = c2d.put
    client.on_twin_desired_properties_patch_received = desired.put

    def on_method(req):
        methods.put(req.name)
        client.send_method_response(MethodResponse.create_from_method_request(
            req, 200, {"echo": req.payload, "by": device_id}))

    client.on_method_request_received = on_method
    client.connect()
    try:
        wait_for(lambda: hub.service.get_device(device_id)["connectionState"] == "Connected")

        msg = Message(json.dumps({"temp": 21.5}))
        msg.content_type, msg.content_encoding = "application/json", "utf-8"
        msg.custom_properties["alert"] = "high temp"
        msg.message_id = "m-1"
        client.send_message(msg)
        rows = wait_for(lambda: hub.service.telemetry(device=device_id), what="telemetry")
        assert json.loads(rows[-1]["body"]) == {"temp": 21.5}
        props = rows[-1]["properties"]
        assert props["alert"] == "high temp" and props["$.ct"] == "application/json" and props["$.mid"] == "m-1"

        client.patch_twin_reported_properties({"firmware": "1.0.0", "led": {"on": True}})
        reported = hub.service.get_twin(device_id)["properties"]["reported"]
        assert reported["firmware"] == "1.0.0" and reported["led"] == {"on": True}

        hub.service.update_twin(device_id, {"interval": 15})
        patch = desired.get(timeout=60)
        assert patch["interval"] == 15 and patch["$version"] >= 2
        twin = client.get_twin()
        assert twin["desired"]["interval"] == 15 and twin["reported"]["firmware"] == "1.0.0"

        hub.service.send_c2d(device_id, "reboot later", {"priority": "low"})
        received = c2d.get(timeout=60)
        assert received.data == b"reboot later" and received.custom_properties["priority"] == "low"

        status, payload = hub.service.invoke_method(device_id, "blink", {"times": 3}, 60)
        assert (status, payload) == (200, {"echo": {"times": 3}, "by": device_id})
        assert methods.get(timeout=5) == "blink"
    finally:
        client.shutdown()
    wait_for(lambda: hub.service.get_device(device_id)["connectionState"] == "Disconnected")


def test_sdk_symmetric_key(sdk_hub):
    from azure.iot.device import IoTHubDeviceClient

    key = sdk_hub.add_device("sdk-sas")
    # with a connection string the SDK takes the gateway from GatewayHostName (its kwarg is refused)
    cs = "HostName=%s;DeviceId=sdk-sas;SharedAccessKey=%s;GatewayHostName=127.0.0.1" % (sdk_hub.hostname, key)
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=sdk_hub.ca_pem.decode())
    exercise(sdk_hub, client, "sdk-sas")


def test_sdk_x509(sdk_hub, tmp_path):
    from azure.iot.device import IoTHubDeviceClient, X509

    out = subprocess.run([sys.executable, "-m", "upyhub", "hub", "device", "add", "sdk-x509", "--auth", "selfSigned",
                          "--make-cert", str(tmp_path), "--data", str(sdk_hub.data_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(str(tmp_path / "sdk-x509.crt"), str(tmp_path / "sdk-x509.key")),
        hostname=sdk_hub.hostname, device_id="sdk-x509",
        server_verification_cert=sdk_hub.ca_pem.decode(), gateway_hostname="127.0.0.1")
    exercise(sdk_hub, client, "sdk-x509")


def test_sdk_with_a_token_from_the_token_service(sdk_hub, tmp_path):
    """The token-service pattern with the official SDK: the device holds no hub key, only a token."""
    from azure.iot.device import IoTHubDeviceClient

    sdk_hub.add_device("sdk-ts")
    registry = tmp_path / "devices.csv"
    secret = tokenservice.add_device(registry, "sdk-ts")
    with TokenServiceProc(sdk_hub, registry) as ts:
        token = ts.token("sdk-ts", secret)["sasToken"]
    client = IoTHubDeviceClient.create_from_sastoken(token, gateway_hostname="127.0.0.1",
                                                     server_verification_cert=sdk_hub.ca_pem.decode())
    exercise(sdk_hub, client, "sdk-ts")
