"""The device endpoint against hostile clients (paho-mqtt): every refusal, and the real device undisturbed.

One hub for the module; `victim` is the legitimate dev1, connected throughout. After each attack it must
still be connected and still receive a cloud-to-device message.
"""
import base64
import contextlib
import os
import time

import pytest

from hubdev import Device, token, wait_for

pytestmark = pytest.mark.slow


def rand_key():
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture(scope="module")
def keys(mhub):
    return {d: mhub.add_device(d) for d in ("dev1", "dev2", "other")}


@pytest.fixture(scope="module")
def victim(mhub, keys):
    dev = Device(mhub, "dev1", token(mhub, "dev1", keys["dev1"]))
    assert dev.wait_connack() == 0
    dev.subscribe("devices/dev1/messages/devicebound/#")
    yield dev
    dev.close()


def still_fine(hub, victim, n=[0]):
    """The real device is connected and receives a C2D message sent now."""
    n[0] += 1
    body = "ping-%d" % n[0]
    hub.service.send_c2d("dev1", body, {"n": str(n[0])})
    wait_for(lambda: any(p == body.encode() for _, p in victim.messages), what="C2D " + body)
    assert victim.connected
    assert hub.service.get_device("dev1")["connectionState"] == "Connected"


def refused(hub, client_id, password, username=None, cert=None):
    with Device(hub, client_id, password, username=username, cert=cert) as dev:
        code = dev.wait_connack()
        dev.wait_disconnected()
        return code


def test_unknown_device(mhub, victim):
    assert refused(mhub, "ghost", token(mhub, "ghost", rand_key())) == 5
    still_fine(mhub, victim)


def test_disabled_device(mhub, keys, victim):
    key = mhub.add_device("disabled1", status="disabled")
    assert refused(mhub, "disabled1", token(mhub, "disabled1", key)) == 5
    still_fine(mhub, victim)


def test_bad_signature_as_the_real_device(mhub, victim):
    assert refused(mhub, "dev1", token(mhub, "dev1", rand_key())) == 5
    still_fine(mhub, victim)


def test_expired_token(mhub, keys, victim):
    assert refused(mhub, "dev1", token(mhub, "dev1", keys["dev1"], expiry=int(time.time()) - 5)) == 5
    still_fine(mhub, victim)


def test_another_devices_token(mhub, keys, victim):
    # dev2's own, valid token presented by a client claiming to be dev1
    assert refused(mhub, "dev1", token(mhub, "dev2", keys["dev2"])) == 5
    still_fine(mhub, victim)


def test_policy_without_device_connect(mhub, victim):
    svc_key = mhub.connection_string("service").split("SharedAccessKey=")[1]
    pw = token(mhub, "dev1", svc_key, sr=mhub.hostname, policy="service")
    assert refused(mhub, "dev1", pw) == 5
    still_fine(mhub, victim)


def test_unknown_policy(mhub, victim):
    assert refused(mhub, "dev1", token(mhub, "dev1", rand_key(), policy="nosuch")) == 5
    still_fine(mhub, victim)


def test_username_for_another_hub(mhub, keys, victim):
    pw = token(mhub, "dev1", keys["dev1"])
    assert refused(mhub, "dev1", pw, username="otherhub.azure-devices.net/dev1/?api-version=2021-04-12") == 4
    still_fine(mhub, victim)


def test_username_names_another_device(mhub, keys, victim):
    pw = token(mhub, "dev2", keys["dev2"])
    assert refused(mhub, "dev1", pw, username="%s/dev2/?api-version=2021-04-12" % mhub.hostname) == 4
    still_fine(mhub, victim)


def test_password_not_a_token(mhub, victim):
    assert refused(mhub, "dev1", "hunter2") == 4
    still_fine(mhub, victim)


def test_no_password_no_certificate(mhub, victim):
    assert refused(mhub, "dev1", None) == 5
    still_fine(mhub, victim)


@pytest.mark.parametrize("variant", ["secondary", "upper-sr", "hub-sr", "policy-device", "policy-device-scoped"])
def test_accepted_token_forms(mhub, keys, victim, variant):
    dev = mhub.service.get_device("other")["authentication"]["symmetricKey"]
    device_policy = mhub.connection_string("device").split("SharedAccessKey=")[1]
    pw = {
        "secondary": token(mhub, "other", dev["secondaryKey"]),
        "upper-sr": token(mhub, "other", keys["other"], sr=("%s/devices/other" % mhub.hostname).upper()),
        "hub-sr": token(mhub, "other", keys["other"], sr=mhub.hostname),
        "policy-device": token(mhub, "other", device_policy, sr=mhub.hostname, policy="device"),
        "policy-device-scoped": token(mhub, "other", device_policy, policy="device"),
    }[variant]
    with Device(mhub, "other", pw) as d:
        assert d.wait_connack() == 0
        d.publish("devices/other/messages/events/v=%s" % variant, b"hi").wait_for_publish(30)
        rows = mhub.service.telemetry(device="other")
        assert any(r["properties"].get("v") == variant for r in rows)
    still_fine(mhub, victim)


def connected_other(mhub, keys):
    d = Device(mhub, "other", token(mhub, "other", keys["other"]))
    assert d.wait_connack() == 0
    return d


@contextlib.contextmanager
def attacker(mhub, keys, victim):
    """A connected "other" for the block, closed after it; then the real device must be undisturbed."""
    d = connected_other(mhub, keys)
    try:
        yield d
    finally:
        d.close()
    still_fine(mhub, victim)


@pytest.mark.parametrize("topic", ["devices/dev1/messages/events/", "devices/other/messages/devicebound/x",
                                   "$iothub/twin/PATCH/properties/desired/?$rid=1", "$iothub/something",
                                   "random/topic"])
def test_forbidden_publish_closes(mhub, keys, victim, topic):
    with attacker(mhub, keys, victim) as d:
        before = len(mhub.service.telemetry(device="dev1"))
        info = d.publish(topic, b"spoof", qos=1)
        d.wait_disconnected()
        assert not info.is_published()  # no PUBACK for a refused publish
        assert len(mhub.service.telemetry(device="dev1")) == before


def test_qos2_publish_closes(mhub, keys, victim):
    with attacker(mhub, keys, victim) as d:
        d.publish("devices/other/messages/events/", b"x", qos=2)
        d.wait_disconnected()


def test_message_over_256kb_closes(mhub, keys, victim):
    with attacker(mhub, keys, victim) as d:
        d.publish("devices/other/messages/events/", b"x" * (256 * 1024), qos=1).wait_for_publish(30)  # the limit
        assert d.connected
        d.publish("devices/other/messages/events/", b"x" * (256 * 1024 + 1), qos=1)
        d.wait_disconnected()


@pytest.mark.parametrize("flt", ["devices/dev1/messages/devicebound/#", "#", "$iothub/#", "devices/+/messages/#"])
def test_forbidden_subscribe_closes(mhub, keys, victim, flt):
    with attacker(mhub, keys, victim) as d:
        d.client.subscribe(flt, 1)
        d.wait_disconnected()


def test_at_most_five_subscriptions(mhub, keys, victim):
    with attacker(mhub, keys, victim) as d:
        for i in range(5):
            d.subscribe("$iothub/methods/POST/m%d" % i)
        assert d.connected
        d.client.subscribe("$iothub/methods/POST/m5", 1)
        d.wait_disconnected()


def test_second_connection_drops_the_first(mhub, keys, victim):
    first = connected_other(mhub, keys)
    second = None
    try:
        second = connected_other(mhub, keys)
        first.wait_disconnected()
        second.subscribe("devices/other/messages/devicebound/#")
        mhub.service.send_c2d("other", "to-second")
        second.wait_message("devices/other/messages/devicebound/")
        assert second.connected
    finally:
        first.close()
        second and second.close()
    still_fine(mhub, victim)


def test_refusals_logged_without_secrets(mhub, keys, victim):
    log = mhub.log()
    assert "refused 'ghost'" in log and "CONNACK 5" in log and "CONNACK 4" in log
    for secret in list(keys.values()) + [mhub.owner_cs.split("SharedAccessKey=")[1]]:
        assert secret not in log
    assert "sig=" not in log and "SharedAccessSignature" not in log


def test_connection_dropped_when_the_token_expires(mhub, keys, victim):
    with Device(mhub, "other", token(mhub, "other", keys["other"], ttl=8)) as d:
        assert d.wait_connack() == 0
        d.wait_disconnected(timeout=60)
    assert "SAS token expired" in mhub.log()
    still_fine(mhub, victim)


def test_disabling_a_device_drops_its_connection(mhub, victim):
    key = mhub.add_device("soon-off")
    with Device(mhub, "soon-off", token(mhub, "soon-off", key)) as d:
        assert d.wait_connack() == 0
        doc = mhub.service.get_device("soon-off")
        mhub.service.put_device("soon-off", status="disabled", primary_key=key,
                                secondary_key=doc["authentication"]["symmetricKey"]["secondaryKey"],
                                etag=doc["etag"])
        d.wait_disconnected()
    assert refused(mhub, "soon-off", token(mhub, "soon-off", key)) == 5
    still_fine(mhub, victim)
