"""The HTTPS service API: every policy against every operation, token checks, etags, twins, C2D, methods."""
import base64
import os
import threading
import time

import pytest

from upyhub import sas
from upyhub.hub.client import ServiceClient, ServiceError
from hubdev import Device, token, wait_for

pytestmark = pytest.mark.slow

# operation -> the permissions that allow it (any one)
OPS = {
    "list_devices": {"RegistryRead"},
    "get_device": {"RegistryRead"},
    "put_device": {"RegistryReadWrite"},
    "delete_device": {"RegistryReadWrite"},
    "get_twin": {"RegistryRead", "ServiceConnect"},
    "update_twin": {"ServiceConnect"},
    "invoke_method": {"ServiceConnect"},
    "send_c2d": {"ServiceConnect"},
    "telemetry": {"ServiceConnect"},
}
POLICIES = {
    "iothubowner": {"RegistryRead", "RegistryReadWrite", "ServiceConnect", "DeviceConnect"},
    "service": {"ServiceConnect"},
    "device": {"DeviceConnect"},
    "registryRead": {"RegistryRead"},
    "registryReadWrite": {"RegistryRead", "RegistryReadWrite"},
}


def call(svc, op, n):
    """Run one operation; returns the HTTP status (200 for success)."""
    try:
        {
            "list_devices": lambda: svc.list_devices(),
            "get_device": lambda: svc.get_device("target"),
            "put_device": lambda: svc.put_device("new-%d" % n),
            "delete_device": lambda: svc.delete_device("victim-%d" % n),
            "get_twin": lambda: svc.get_twin("target"),
            "update_twin": lambda: svc.update_twin("target", {"n": n}),
            "invoke_method": lambda: svc.invoke_method("target", "ping", {}, 1),
            "send_c2d": lambda: svc.send_c2d("target", "m%d" % n),
            "telemetry": lambda: svc.telemetry(),
        }[op]()
        return 200
    except ServiceError as e:
        return e.status


def test_policy_permission_matrix(mhub):
    mhub.add_device("target")
    n = 0
    for policy, rights in POLICIES.items():
        svc = ServiceClient(mhub.connection_string(policy), mhub.ca_path, host=mhub.host, port=mhub.https_port)
        for op, need in OPS.items():
            n += 1
            mhub.add_device("victim-%d" % n)
            status = call(svc, op, n)
            if rights & need:
                # allowed: the operation itself ran (a method to an offline device is a 404, not a 401)
                assert status == (404 if op == "invoke_method" else 200), (policy, op, status)
            else:
                assert status == 401, (policy, op, status)
            if op == "put_device":
                assert (mhub.service.list_devices() and
                        any(d["deviceId"] == "new-%d" % n for d in mhub.service.list_devices())) == (status == 200)
            if op == "delete_device":
                ids = [d["deviceId"] for d in mhub.service.list_devices()]
                assert ("victim-%d" % n in ids) == (status != 200)
    assert "lacks" in mhub.log()


def raw_status(hub, authorization):
    import http.client
    import ssl
    ctx = ssl.create_default_context(cafile=str(hub.ca_path))
    conn = http.client.HTTPSConnection(hub.host, hub.https_port, context=ctx, timeout=60)
    try:
        conn.request("GET", "/devices?api-version=2021-04-12",
                     headers={"Authorization": authorization} if authorization else {})
        return conn.getresponse().status
    finally:
        conn.close()


def test_bad_service_tokens(mhub):
    key = mhub.owner_cs.split("SharedAccessKey=")[1]
    good = sas.mint(mhub.hostname, key, int(time.time()) + 600, policy="iothubowner")
    assert raw_status(mhub, good) == 200
    wrong_key = base64.b64encode(os.urandom(32)).decode()
    assert raw_status(mhub, None) == 401
    assert raw_status(mhub, "Bearer abc") == 401
    assert raw_status(mhub, sas.mint(mhub.hostname, wrong_key, int(time.time()) + 600, policy="iothubowner")) == 401
    assert raw_status(mhub, sas.mint(mhub.hostname, key, int(time.time()) - 1, policy="iothubowner")) == 401
    assert raw_status(mhub, sas.mint("otherhub.azure-devices.net", key, int(time.time()) + 600,
                                     policy="iothubowner")) == 401
    # a device key token (no skn) is not a service credential
    dkey = mhub.add_device("svc-dev")
    assert raw_status(mhub, sas.mint("%s/devices/svc-dev" % mhub.hostname, dkey, int(time.time()) + 600)) == 401


def test_registry_etags_and_keys(mhub):
    svc = mhub.service
    key = base64.b64encode(os.urandom(32)).decode()
    doc = svc.put_device("etag-dev", primary_key=key)
    assert doc["authentication"]["symmetricKey"]["primaryKey"] == key
    assert doc["status"] == "enabled" and doc["connectionState"] == "Disconnected"
    with pytest.raises(ServiceError) as e:
        svc.put_device("etag-dev")  # exists: an update needs If-Match
    assert e.value.status == 409
    with pytest.raises(ServiceError) as e:
        svc.put_device("etag-dev", status="disabled", etag='"bm9wZQ=="')
    assert e.value.status == 412
    doc2 = svc.put_device("etag-dev", status="disabled", primary_key=key, etag=doc["etag"])
    assert doc2["status"] == "disabled" and doc2["etag"] != doc["etag"]
    with pytest.raises(ServiceError) as e:
        svc.put_device("bad-key", primary_key="not base64!")
    assert e.value.status == 400
    with pytest.raises(ServiceError) as e:
        svc.get_device("nosuch")
    assert e.value.status == 404
    svc.delete_device("etag-dev", etag=doc2["etag"])
    with pytest.raises(ServiceError) as e:
        svc.get_device("etag-dev")
    assert e.value.status == 404


def test_twin_methods_c2d_telemetry_with_a_device(mhub):
    key = mhub.add_device("busy")
    with Device(mhub, "busy", token(mhub, "busy", key)) as d:
        assert d.wait_connack() == 0
        d.subscribe("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#",
                    "devices/busy/messages/devicebound/#")
        # reported patch -> 204 with a new $version, visible in the service twin
        d.publish("$iothub/twin/PATCH/properties/reported/?$rid=r1", b'{"fw": "1.2", "temp": {"max": 30}}')
        topic, _ = d.wait_message("$iothub/twin/res/204/?$rid=r1")
        assert "$version=2" in topic
        twin = mhub.service.get_twin("busy")
        assert twin["properties"]["reported"]["fw"] == "1.2"
        assert twin["properties"]["reported"]["$version"] == 2
        # desired update pushed to the device with its $version
        mhub.service.update_twin("busy", {"interval": 7})
        topic, body = d.wait_message("$iothub/twin/PATCH/properties/desired/")
        assert topic.endswith("$version=2") and b'"interval": 7' in body
        # twin GET: both halves
        d.publish("$iothub/twin/GET/?$rid=g1", b"")
        _, body = d.wait_message("$iothub/twin/res/200/?$rid=g1")
        assert b'"fw": "1.2"' in body and b'"interval": 7' in body
        # direct method: the device's status and payload come back to the caller
        stop = threading.Event()

        def answer():
            while not stop.is_set():
                for t, p in list(d.messages):
                    if t.startswith("$iothub/methods/POST/echo/"):
                        rid = t.split("$rid=")[1]
                        d.publish("$iothub/methods/res/201/?$rid=" + rid, p)
                        return
                time.sleep(0.02)

        threading.Thread(target=answer, daemon=True).start()
        assert mhub.service.invoke_method("busy", "echo", {"x": [1, 2]}, 30) == (201, {"x": [1, 2]})
        stop.set()
        # no answer -> 504
        with pytest.raises(ServiceError) as e:
            mhub.service.invoke_method("busy", "silent", {}, 1)
        assert e.value.status == 504
        # C2D with properties
        mhub.service.send_c2d("busy", "hello", {"color": "red & blue"})
        topic, body = d.wait_message("devices/busy/messages/devicebound/")
        assert body == b"hello" and "color=red%20%26%20blue" in topic
        # telemetry with properties, read back with its enqueued time and sequence
        d.publish("devices/busy/messages/events/%24.ct=application%2Fjson&level=high", b'{"t": 21.5}')
        rows = wait_for(lambda: mhub.service.telemetry(device="busy"))
        assert rows[-1]["body"] == '{"t": 21.5}'
        assert rows[-1]["properties"] == {"$.ct": "application/json", "level": "high"}
        assert rows[-1]["enqueuedTime"].endswith("Z") and rows[-1]["seq"] > 0
        assert mhub.service.telemetry(device="busy", since=rows[-1]["seq"]) == []
    # offline device: 404 for a method
    wait_for(lambda: mhub.service.get_device("busy")["connectionState"] == "Disconnected")
    with pytest.raises(ServiceError) as e:
        mhub.service.invoke_method("busy", "echo", {}, 5)
    assert e.value.status == 404
