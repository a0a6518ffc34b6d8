"""Run only inside a private network namespace (test_service_sdk.py starts it): the official service SDK
`azure-iot-hub` (IoTHubRegistryManager) against the local hub, unchanged.

The SDK always talks to https://{HostName}:443, so here the hub hostname resolves to 127.0.0.1 through a
private /etc/hosts (bind-mounted by the namespace's mount table) and the hub serves HTTPS on 443 and MQTT
on 8883 of the namespace's own loopback. The SDK verifies the hub certificate against the hub CA through
requests' REQUESTS_CA_BUNDLE. Nothing of the SDK is patched.
"""
import os
import threading
import time

import pytest

from hubdev import Device, token, wait_for
from hubfixture import LocalHub
from upyhub.hub import pki

pytestmark = pytest.mark.skipif(os.environ.get("UPYHUB_NETNS") != "1", reason="runs inside test_service_sdk's netns")


@pytest.fixture(scope="module")
def nhub(tmp_path_factory):
    h = LocalHub(tmp_path_factory.mktemp("sdkhub"), mqtt_port=8883, https_port=443).start()
    os.environ["REQUESTS_CA_BUNDLE"] = str(h.ca_path)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def rm(nhub):
    from azure.iot.hub import IoTHubRegistryManager
    return IoTHubRegistryManager.from_connection_string(nhub.owner_cs)


def status_of(call, *args):
    from msrest.exceptions import HttpOperationError
    with pytest.raises(HttpOperationError) as e:
        call(*args)
    return e.value.response.status_code


def new_key():
    import base64
    return base64.b64encode(os.urandom(32)).decode()


def test_registry_calls(nhub, rm):
    pk, sk = new_key(), new_key()
    dev = rm.create_device_with_sas("sdk-a", pk, sk, "enabled")
    assert dev.device_id == "sdk-a" and dev.authentication.type == "sas"
    assert dev.authentication.symmetric_key.primary_key == pk and dev.capabilities.iot_edge is False
    assert dev.connection_state == "Disconnected" and dev.status_updated_time is not None
    assert '"' not in dev.etag
    assert status_of(rm.create_device_with_sas, "sdk-a", pk, sk, "enabled") == 409
    for d in ("sdk-b", "sdk-c"):
        rm.create_device_with_sas(d, new_key(), new_key(), "enabled")
    assert len(rm.get_devices()) >= 3
    assert len(rm.get_devices(max_number_of_devices=2)) == 2
    # update with the SDK's default If-Match: "*" (quoted), then with a stale etag
    upd = rm.update_device_with_sas("sdk-a", None, pk, sk, "disabled")
    assert upd.status == "disabled" and upd.etag != dev.etag
    assert status_of(rm.update_device_with_sas, "sdk-a", dev.etag, pk, sk, "enabled") == 412
    assert rm.update_device_with_sas("sdk-a", upd.etag, pk, sk, "enabled").status == "enabled"
    assert rm.get_device("sdk-a").status == "enabled"
    stats = rm.get_device_registry_statistics()
    assert stats.total_device_count >= 3 and stats.enabled_device_count >= 3
    assert rm.get_service_statistics().connected_device_count == 0
    rm.delete_device("sdk-b")  # default etag "*"
    assert status_of(rm.get_device, "sdk-b") == 404
    assert status_of(rm.delete_device, "sdk-c", '"bm9wZQ=="') == 412
    rm.delete_device("sdk-c", rm.get_device("sdk-c").etag)
    assert status_of(rm.get_device, "nosuch") == 404


def test_x509_devices_created_by_the_sdk_connect(nhub, rm, tmp_path):
    cert, key = pki.self_signed_client("sdk-x509")
    files = pki.PKI.write_pair(cert, key, tmp_path, "sdk-x509")
    sha1, _ = pki.thumbprints(pki.der(cert))
    dev = rm.create_device_with_x509("sdk-x509", sha1, None, "enabled")  # SHA-1, as Azure's portal shows it
    assert dev.authentication.type == "selfSigned"
    with Device(nhub, "sdk-x509", None, cert=files) as d:
        assert d.wait_connack() == 0
    rm.create_device_with_certificate_authority("sdk-ca", "enabled")
    files = nhub.pki.issue_device_cert("sdk-ca", tmp_path)
    with Device(nhub, "sdk-ca", None, cert=files) as d:
        assert d.wait_connack() == 0


def test_twin_calls(nhub, rm):
    from azure.iot.hub.models import Twin, TwinProperties
    rm.create_device_with_sas("sdk-twin", new_key(), new_key(), "enabled")
    twin = rm.get_twin("sdk-twin")
    assert twin.device_id == "sdk-twin" and twin.properties.desired["$version"] == 1
    assert twin.authentication_type == "sas" and twin.connection_state == "Disconnected"
    assert "$metadata" in twin.properties.desired and twin.capabilities.iot_edge is False
    t2 = rm.update_twin("sdk-twin", Twin(tags={"site": "lab", "floor": 2},
                                         properties=TwinProperties(desired={"interval": 5})))
    assert t2.tags == {"site": "lab", "floor": 2} and t2.properties.desired["interval"] == 5
    assert t2.etag != twin.etag
    t3 = rm.update_twin("sdk-twin", Twin(tags={"floor": None, "room": "a"}), t2.etag)  # merge: null deletes
    assert t3.tags == {"site": "lab", "room": "a"} and t3.properties.desired["interval"] == 5
    assert status_of(rm.update_twin, "sdk-twin", Twin(tags={"x": 1}), t2.etag) == 412
    t4 = rm.replace_twin("sdk-twin", Twin(tags={"only": True}, properties=TwinProperties(desired={"mode": "eco"})))
    assert t4.tags == {"only": True}
    assert {k: v for k, v in t4.properties.desired.items() if not k.startswith("$")} == {"mode": "eco"}
    deep = 1
    for _ in range(10):
        deep = {"d": deep}  # 10 levels of objects below desired: IoT Hub's limit
    rm.update_twin("sdk-twin", Twin(properties=TwinProperties(desired={"deep": deep})))
    assert status_of(rm.update_twin, "sdk-twin", Twin(properties=TwinProperties(desired={"deep": {"d": deep}}))) == 400


def test_direct_method(nhub, rm):
    from azure.iot.hub.models import CloudToDeviceMethod
    key = nhub.add_device("sdk-m")
    req = CloudToDeviceMethod(method_name="blink", payload={"n": 3}, response_timeout_in_seconds=30)
    assert status_of(rm.invoke_device_method, "sdk-m", req) == 404  # offline
    with Device(nhub, "sdk-m", token(nhub, "sdk-m", key)) as d:
        assert d.wait_connack() == 0
        d.subscribe("$iothub/methods/POST/#")
        done = threading.Event()

        def answer():
            while not done.is_set():
                for t, p in list(d.messages):
                    if t.startswith("$iothub/methods/POST/blink/"):
                        d.publish("$iothub/methods/res/200/?$rid=" + t.split("$rid=")[1], b'{"blinked": 3}')
                        return
                time.sleep(0.02)

        threading.Thread(target=answer, daemon=True).start()
        res = rm.invoke_device_method("sdk-m", req)
        done.set()
        assert (res.status, res.payload) == (200, {"blinked": 3})
        wait_for(lambda: rm.get_device("sdk-m").connection_state == "Connected")
