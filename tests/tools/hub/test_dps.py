"""The local DPS: Azure's MQTT registration protocol, attestation (symmetric keys, derived group keys,
X.509 thumbprints and CA chains), DPS's status codes, and the devices it creates in the hub's registry.
Every key is made here at test time; none may reach the hub's log."""
import json
import socket
import subprocess
import sys

import pytest
from certhelpers import make_cert
from dpsdev import DpsClient, registration_token
from hubdev import Device, closed_by_peer, token
from hubfixture import LocalHub
from upyhub import sas
from upyhub.hub import dps, pki

pytestmark = pytest.mark.slow


def cli(hub, *args, status=0):
    out = subprocess.run([sys.executable, "-m", "upyhub", "hub", *args, "--data", str(hub.data_dir)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == status, (args, out.stdout, out.stderr)
    return out.stdout if status == 0 else out.stderr


def keys_of(doc):
    k = doc["attestation"]["symmetricKey"]
    return k["primaryKey"], k["secondaryKey"]


def connects(hub, device_id, key=None, cert=None):
    with Device(hub, device_id, token(hub, device_id, key) if key else None, cert=cert) as d:
        return d.wait_connack()


def test_symmetric_key_individual_enrollment(mhub):
    primary, secondary = keys_of(dps.create_enrollment(mhub.data_dir, "sym-one", device_id="sym-device"))
    scope = mhub.id_scope
    assert scope.startswith("0ne") and len(scope) == 11
    with DpsClient(mhub, "sym-one", registration_token(scope, "sym-one", primary)) as d:
        status, props, doc = d.register({"modelId": "dtmi:upyhub:test;1", "n": [1, 2]})
        assert status == 202 and props["retry-after"] == "3"
        assert doc["status"] == "assigning" and doc["operationId"]
        status, _, done = d.poll(doc["operationId"])
    assert status == 200 and done["status"] == "assigned" and done["operationId"] == doc["operationId"]
    state = done["registrationState"]
    assert state["assignedHub"] == mhub.hostname and state["deviceId"] == "sym-device"
    assert state["registrationId"] == "sym-one" and state["status"] == "assigned"
    assert state["substatus"] == "initialAssignment"
    assert state["payload"] == {"modelId": "dtmi:upyhub:test;1", "n": [1, 2]}
    dev = mhub.service.get_device("sym-device")
    assert dev["authentication"]["type"] == "sas"
    assert keys_of({"attestation": dev["authentication"]}) == (primary, secondary)
    assert connects(mhub, "sym-device", primary) == 0 and connects(mhub, "sym-device", secondary) == 0

    # registering again (with the secondary key) updates the record, keeps the assignment
    with DpsClient(mhub, "sym-one", registration_token(scope, "sym-one", secondary)) as d:
        again = d.provision()["registrationState"]
    assert again["deviceId"] == "sym-device" and again["etag"] != state["etag"] and again["payload"] is None
    shown = json.loads(cli(mhub, "dps", "registration", "show", "sym-one"))
    assert shown["deviceId"] == "sym-device" and shown["enrollment"] == {"type": "individual",
                                                                         "registrationId": "sym-one"}
    assert "sym-one" in cli(mhub, "dps", "registration", "list")
    log = mhub.log()
    assert "DPS: assigned 'sym-one'" in log and primary not in log and secondary not in log


def test_group_enrollment_derives_distinct_device_keys(mhub, tmp_path):
    doc = dps.create_enrollment_group(mhub.data_dir, "fleet-a")
    group_primary, group_secondary = keys_of(doc)
    scope = mhub.id_scope
    keys = {}
    for reg_id in ("fleet-a-001", "fleet-a-002"):
        derived = sas.derive_device_key(group_primary, reg_id)
        with DpsClient(mhub, reg_id, registration_token(scope, reg_id, derived)) as d:
            state = d.provision()["registrationState"]
        assert state["deviceId"] == reg_id and state["assignedHub"] == mhub.hostname
        dev = mhub.service.get_device(reg_id)["authentication"]["symmetricKey"]
        assert dev == {"primaryKey": derived, "secondaryKey": sas.derive_device_key(group_secondary, reg_id)}
        assert connects(mhub, reg_id, derived) == 0
        keys[reg_id] = derived
    assert len(set(keys.values())) == 2
    # the derived key of the group's secondary key registers too; the group key itself does not
    with DpsClient(mhub, "fleet-a-003", registration_token(scope, "fleet-a-003",
                                                          sas.derive_device_key(group_secondary, "fleet-a-003"))) as d:
        assert d.provision()["registrationState"]["deviceId"] == "fleet-a-003"
    with DpsClient(mhub, "fleet-a-004", registration_token(scope, "fleet-a-004", group_primary)) as d:
        status, _, err = d.register()
    assert status == 401 and err["errorCode"] == 401002 and "trackingId" in err
    # another device's derived key: 401
    with DpsClient(mhub, "fleet-a-005", registration_token(scope, "fleet-a-005", keys["fleet-a-001"])) as d:
        assert d.register()[0] == 401
    # a disabled individual enrollment blocks one device of the group (Azure's way to disallow it)
    dps.create_enrollment(mhub.data_dir, "fleet-a-006", enabled=False)
    with DpsClient(mhub, "fleet-a-006", registration_token(scope, "fleet-a-006",
                                                          sas.derive_device_key(group_primary, "fleet-a-006"))) as d:
        status, _, err = d.register()
    assert status == 403 and "individual enrollment fleet-a-006 is disabled" in err["message"]
    cli(mhub, "dps", "enrollment-group", "disable", "fleet-a")
    with DpsClient(mhub, "fleet-a-001", registration_token(scope, "fleet-a-001", keys["fleet-a-001"])) as d:
        status, _, err = d.register()
        assert status == 403 and "group enrollment fleet-a is disabled" in err["message"]
        cli(mhub, "dps", "enrollment-group", "enable", "fleet-a")
        assert d.provision()["registrationState"]["deviceId"] == "fleet-a-001"
    log = mhub.log()
    assert group_primary not in log and group_secondary not in log and keys["fleet-a-001"] not in log


def test_status_codes_of_an_empty_dps(hub):
    """404 with no enrollment at all; 400 for registration ids and bodies; 401 for every bad credential."""
    scope = hub.id_scope
    key = sas.new_key()
    with DpsClient(hub, "nobody", registration_token(scope, "nobody", key)) as d:
        status, _, err = d.register()
        assert status == 404 and err["errorCode"] == 404201
    primary, _ = keys_of(dps.create_enrollment(hub.data_dir, "known"))
    good = registration_token(scope, "known", primary)
    with DpsClient(hub, "Known", registration_token(scope, "Known", primary)) as d:
        status, _, err = d.register()
        assert status == 400 and "lowercase" in err["message"]
    with DpsClient(hub, "known", good) as d:
        assert d.register(registration_id="other")[0] == 400  # body names another registration
        assert d.register(body=b"{not json")[0] == 400
        assert d.register(payload="x" * (dps.MAX_PAYLOAD + 1))[0] == 400
        status, _, err = d.poll("4.0000000000000000.no-such-operation")
        assert status == 404
    bad_tokens = {
        "wrong key": registration_token(scope, "known", key),
        "expired": registration_token(scope, "known", primary, expiry=1000),
        "skn not registration": registration_token(scope, "known", primary, skn="device"),
        "another registration's token": registration_token(scope, "other", primary),
    }
    for what, tok in bad_tokens.items():
        with DpsClient(hub, "known", tok) as d:
            assert d.connack == 0
            status, _, err = d.register()
            assert status == 401, what
    with DpsClient(hub, "known", registration_token("0neFFFFFFFF", "known", primary), scope="0neFFFFFFFF") as d:
        status, _, err = d.register()
        assert status == 401 and "unknown ID scope" in err["message"]
    with DpsClient(hub, "known", None) as d:
        assert d.register()[0] == 401  # neither a token nor a certificate
    cli(hub, "dps", "enrollment", "disable", "known")
    with DpsClient(hub, "known", good) as d:
        assert d.register()[0] == 403
    cli(hub, "dps", "enrollment", "enable", "known")
    with DpsClient(hub, "known", good) as d:
        assert d.provision()["registrationState"]["deviceId"] == "known"
    with DpsClient(hub, "known", registration_token(scope, "known", primary, skn=None)) as d:
        assert d.provision()["registrationState"]["deviceId"] == "known"  # no skn: what the Python SDK sends
    rows = json.loads(cli(hub, "dps", "registration", "list", "-o", "json"))
    assert [r["registrationId"] for r in rows] == ["known"]  # refusals leave no record
    # a CONNECT that is not DPS's form: CONNACK 4
    for username in ("%s/known/api-version=2019-03-31" % scope, "%s/registrations/someone/api-version=1" % scope,
                     "%s/registrations/known/" % scope):
        with DpsClient(hub, "known", good, username=username) as d:
            assert d.connack == 4, username
    with DpsClient(hub, "known", "not a token") as d:
        assert d.connack == 4
    log = hub.log()
    assert "DPS: refused register of 'known'" in log and "DPS: refused 'known'" in log
    assert primary not in log and key not in log


def _device_files(tmp_path, cn, issuer, chain=()):
    """A device certificate (CN = cn) from issuer (a certhelpers.Made), with the chain after it in its file."""
    cert, key = pki.issue(issuer.cert, issuer.key, cn, client=True)
    crt, kp = pki.PKI.write_pair(cert, key, tmp_path, cn)
    crt.write_bytes(pki.cert_pem(cert) + b"".join(c.pem for c in chain))
    return crt, kp


def test_x509_individual_enrollment(mhub, tmp_path):
    cli(mhub, "dps", "enrollment", "create", "x509-one", "--attestation", "x509", "--make-cert", str(tmp_path))
    files = (tmp_path / "x509-one.crt", tmp_path / "x509-one.key")
    with DpsClient(mhub, "x509-one", cert=files) as d:
        state = d.provision()["registrationState"]
    assert state["deviceId"] == "x509-one"
    dev = mhub.service.get_device("x509-one")["authentication"]
    thumb = pki.thumbprints(pki.der(pki.load_cert(files[0].read_bytes())))[1]
    assert dev["type"] == "selfSigned" and dev["x509Thumbprint"]["primaryThumbprint"] == thumb
    assert connects(mhub, "x509-one", cert=files) == 0
    # another certificate with the same CN: 401; a certificate whose CN is not the registration id: 401
    other, other_key = pki.self_signed_client("x509-one")
    with DpsClient(mhub, "x509-one", cert=pki.PKI.write_pair(other, other_key, tmp_path / "o", "x509-one")) as d:
        assert d.register()[0] == 401
    with DpsClient(mhub, "x509-two", cert=files) as d:
        status, _, err = d.register()
        assert status == 401 and "CN is not the registration id" in err["message"]


def test_x509_group_enrollment_with_an_intermediate_ca(mhub, tmp_path):
    root = make_cert("factory root")
    inter = make_cert("factory line 1", issuer=root)
    (tmp_path / "inter.pem").write_bytes(inter.pem)
    cli(mhub, "dps", "enrollment-group", "create", "line-1", "--attestation", "x509", "--ca-cert",
        str(tmp_path / "inter.pem"))
    files = _device_files(tmp_path, "line-1-dev", inter, chain=[inter])
    with DpsClient(mhub, "line-1-dev", cert=files) as d:
        state = d.provision({"batch": 7})["registrationState"]
    assert state["deviceId"] == "line-1-dev" and state["payload"] == {"batch": 7}
    assert mhub.service.get_device("line-1-dev")["authentication"]["type"] == "certificateAuthority"
    assert connects(mhub, "line-1-dev", cert=files) == 0  # the group's CA was registered with the hub
    group = json.loads(cli(mhub, "dps", "enrollment-group", "show", "line-1"))
    info = group["attestation"]["x509"]["signingCertificates"]["primary"]["info"]
    assert info["sha256Thumbprint"] == inter.sha256.upper()
    # a device of another CA, or of a sibling intermediate of the same root: 401
    with DpsClient(mhub, "line-1-bad", cert=_device_files(tmp_path, "line-1-bad", make_cert("stranger"))) as d:
        assert d.register()[0] == 401
    sibling = make_cert("line 2", issuer=root)
    with DpsClient(mhub, "line-1-x", cert=_device_files(tmp_path, "line-1-x", sibling, chain=[sibling])) as d:
        assert d.register()[0] == 401
    # a group of a root CA: its devices send their intermediate (without it: 401)
    root2 = make_cert("plant 2 root")
    inter2 = make_cert("plant 2 line", issuer=root2)
    dps.create_enrollment_group(mhub.data_dir, "plant-2", attestation="x509", ca_certs=[root2.cert])
    with DpsClient(mhub, "plant-2-dev", cert=_device_files(tmp_path, "plant-2-dev", inter2)) as d:
        assert d.register()[0] == 401
    with DpsClient(mhub, "plant-2-dev", cert=_device_files(tmp_path, "plant-2-dev", inter2, chain=[inter2])) as d:
        assert d.provision()["registrationState"]["deviceId"] == "plant-2-dev"


def test_a_connection_without_credentials_does_not_disturb_a_registering_device(mhub):
    primary, _ = keys_of(dps.create_enrollment(mhub.data_dir, "steady"))
    with DpsClient(mhub, "steady", registration_token(mhub.id_scope, "steady", primary)) as device:
        status, _, doc = device.register()
        assert status == 202
        with DpsClient(mhub, "steady", None) as intruder:  # same registration id, no credential
            assert intruder.connack == 0 and intruder.register()[0] == 401
            assert intruder.poll(doc["operationId"])[0] == 401  # nor can it read the device's operation
            status, _, done = device.poll(doc["operationId"])
            assert status == 200 and done["registrationState"]["deviceId"] == "steady"
            assert not device.disconnected.is_set()


def test_abuse_closes_the_connection(mhub):
    primary, _ = keys_of(dps.create_enrollment(mhub.data_dir, "abuser"))
    tok = registration_token(mhub.id_scope, "abuser", primary)
    for action in (lambda d: d.client.publish("devices/abuser/messages/events/", b"x", qos=1),
                   lambda d: d.client.subscribe("$iothub/twin/res/#", qos=1),
                   lambda d: d.client.publish("$dps/registrations/PUT/iotdps-register/?$rid=1",
                                              b"x" * (17 * 1024), qos=1)):
        with DpsClient(mhub, "abuser", tok) as d:
            action(d)
            assert d.disconnected.wait(30), "the DPS did not close the connection"
    # more than 10 requests in 10 s: 429 with retry-after
    with DpsClient(mhub, "abuser", tok) as d:
        answers = [d.answer(rid) for rid in [d.poll("4.0.none", wait=False) for _ in range(11)]]
    assert [a[0] for a in answers[:10]] == [404] * 10
    assert answers[10][0] == 429 and int(answers[10][1]["retry-after"]) >= 1


def test_registration_and_enrollment_cli(mhub):
    primary, _ = keys_of(dps.create_enrollment(mhub.data_dir, "cli-reg"))
    with DpsClient(mhub, "cli-reg", registration_token(mhub.id_scope, "cli-reg", primary)) as d:
        d.provision()
    rows = json.loads(cli(mhub, "dps", "registration", "list", "-o", "json"))
    assert any(r["registrationId"] == "cli-reg" and r["status"] == "assigned" for r in rows)
    shown = json.loads(cli(mhub, "dps", "enrollment", "show", "cli-reg"))
    assert shown["attestation"] == {"type": "symmetricKey"} and primary not in json.dumps(shown)
    assert keys_of(json.loads(cli(mhub, "dps", "enrollment", "show", "cli-reg", "--keys")))[0] == primary
    assert primary not in cli(mhub, "dps", "enrollment", "list") + cli(mhub, "dps", "enrollment", "list", "-o", "json")
    cli(mhub, "dps", "registration", "remove", "cli-reg")
    assert "no registration 'cli-reg'" in cli(mhub, "dps", "registration", "show", "cli-reg", status=1)
    assert mhub.service.get_device("cli-reg")["deviceId"] == "cli-reg"  # the device stays in the hub
    cli(mhub, "dps", "enrollment", "remove", "cli-reg")
    assert "no individual enrollment 'cli-reg'" in cli(mhub, "dps", "enrollment", "show", "cli-reg", status=1)
    show = json.loads(cli(mhub, "dps", "show"))
    assert show == {"idScope": mhub.id_scope, "hostname": "global.azure-devices-provisioning.net",
                    "host": mhub.dps_host, "port": mhub.dps_port, "running": True, "caPath": str(mhub.ca_path)}


def test_a_data_folder_from_before_the_dps_gets_the_dps_name(tmp_path):
    """An older data folder: no DPS hostname in its state or server certificate. `serve` reissues the
    certificate from the same CA (devices that pin the CA are unaffected) and the DPS name verifies."""
    hub = LocalHub(tmp_path / "old")
    p = hub.pki
    state = json.loads(p.state_path.read_text())
    del state["dps_hostname"]
    p.state_path.write_text(json.dumps(state))
    leaf, leaf_key = pki.issue(*p.ca(), p.hostname, server_names=(p.hostname, "localhost", "127.0.0.1"))
    pki.PKI.write_pair(leaf, leaf_key, tmp_path, "old-server")
    (tmp_path / "old-server.crt").replace(p.server_paths()[0])
    (tmp_path / "old-server.key").replace(p.server_paths()[1])
    ca_before = p.ca_path().read_bytes()
    hub.start()
    try:
        with DpsClient(hub, "late", registration_token(hub.id_scope, "late", sas.new_key())) as d:
            assert d.connack == 0  # TLS verified global.azure-devices-provisioning.net
        assert p.ca_path().read_bytes() == ca_before and "server certificate 1 reissued by CA 1" in hub.log()
    finally:
        hub.stop()


def test_connections_count_against_their_address_until_they_authenticate(tmp_path):
    """DPS checks credentials per request, so a connection that never authenticates still counts as
    'not logged in' for the per-address cap (`serve --max-pending`)."""
    hub = LocalHub(tmp_path / "hub", serve_args=["--max-pending", "2"]).start()
    try:
        keys = {r: keys_of(dps.create_enrollment(hub.data_dir, r))[0] for r in ("gated-0", "gated-1")}
        gated = [DpsClient(hub, r, registration_token(hub.id_scope, r, k)) for r, k in keys.items()]
        assert [d.connack for d in gated] == [0, 0]  # connected, not authenticated yet: both count
        assert closed_by_peer(socket.create_connection((hub.dps_host, hub.dps_port)))  # a third: cut at once
        assert gated[0].provision()["registrationState"]["deviceId"] == "gated-0"  # authenticated: room again
        with DpsClient(hub, "third", None) as third:
            assert third.connack == 0
            assert closed_by_peer(socket.create_connection((hub.dps_host, hub.dps_port)))
        for d in gated:
            d.close()
        assert "connections from there are not logged in yet" in hub.log()
    finally:
        hub.stop()


def test_a_busy_dps_port_is_one_line(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        hub = LocalHub(tmp_path / "hub")
        out = subprocess.run([sys.executable, "-m", "upyhub", "hub", "serve", "--data", str(hub.data_dir), "--bind",
                              "127.0.0.1", "--port", "0", "--https-port", "0", "--dps-port", str(port)],
                             capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("upyhub: error: cannot listen on 127.0.0.1:%d" % port), out.stderr
    assert not (hub.data_dir / "serve.json").exists()
