"""Restart survival, TLS version floor, X.509 device authentication, CA rotation on a running hub."""
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from hubdev import Device, mqtt_str, token, wait_for

pytestmark = pytest.mark.slow


def test_state_survives_restart(hub):
    key = hub.add_device("keeper")
    d = Device(hub, "keeper", token(hub, "keeper", key))
    assert d.wait_connack() == 0
    d.subscribe("$iothub/twin/res/#")
    d.publish("$iothub/twin/PATCH/properties/reported/?$rid=1", b'{"fw": "2.0"}')
    d.wait_message("$iothub/twin/res/204/")
    d.publish("devices/keeper/messages/events/k=v", b"before restart").wait_for_publish(30)
    d.close()
    wait_for(lambda: hub.service.get_device("keeper")["connectionState"] == "Disconnected")
    hub.service.update_twin("keeper", {"mode": "eco"})
    hub.service.send_c2d("keeper", "queued while offline", {"p": "1"})
    ports = (hub.mqtt_port, hub.https_port)

    hub.stop()
    assert hub.returncode == 0 and hub.log().rstrip().endswith("stopped")  # SIGTERM: a clean stop
    hub.start()
    assert (hub.mqtt_port, hub.https_port) == ports
    dev = hub.service.get_device("keeper")
    assert dev["authentication"]["symmetricKey"]["primaryKey"] == key
    assert dev["cloudToDeviceMessageCount"] == 1
    twin = hub.service.get_twin("keeper")["properties"]
    assert twin["reported"]["fw"] == "2.0" and twin["desired"]["mode"] == "eco"
    rows = hub.service.telemetry(device="keeper")
    assert [(r["body"], r["properties"]) for r in rows] == [("before restart", {"k": "v"})]
    # the queued C2D message is delivered when the device comes back (QoS 1), then no longer queued
    with Device(hub, "keeper", token(hub, "keeper", key)) as d:
        assert d.wait_connack() == 0
        d.subscribe("devices/keeper/messages/devicebound/#")
        topic, body = d.wait_message("devices/keeper/messages/devicebound/")
        assert body == b"queued while offline" and "p=1" in topic
        wait_for(lambda: hub.service.get_device("keeper")["cloudToDeviceMessageCount"] == 0)


def tls_connect(hub, ctx):
    with socket.create_connection((hub.host, hub.mqtt_port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname=hub.hostname) as s:
            return s.version()


def tls11_client(hub):
    ctx = ssl.create_default_context(cafile=str(hub.ca_path))
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_11_refused(mhub):
    # control: this client does speak TLS 1.1 to a server that allows it (same certificate as the hub)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*map(str, mhub.pki.server_paths()))
    server_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    versions = []
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)

        def accept():
            conn, _ = ls.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                versions.append(s.version())

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        with socket.create_connection(ls.getsockname(), timeout=30) as raw:
            with tls11_client(mhub).wrap_socket(raw, server_hostname=mhub.hostname) as s:
                assert s.version() == "TLSv1.1"
        t.join(30)
    assert versions == ["TLSv1.1"]
    # the hub refuses it, and speaks TLS 1.2 to a TLS 1.2-only client
    with pytest.raises(ssl.SSLError):
        tls_connect(mhub, tls11_client(mhub))
    ctx = ssl.create_default_context(cafile=str(mhub.ca_path))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    assert tls_connect(mhub, ctx) == "TLSv1.2"


def test_server_certificate_names(mhub):
    ctx = ssl.create_default_context(cafile=str(mhub.ca_path))
    for name in (mhub.hostname, "localhost", "127.0.0.1"):
        with socket.create_connection((mhub.host, mhub.mqtt_port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                assert s.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError):
        with socket.create_connection((mhub.host, mhub.mqtt_port), timeout=30) as raw:
            ctx.wrap_socket(raw, server_hostname="evil.example.com")


def cli(hub, *args):
    return subprocess.run([sys.executable, "-m", "upyhub", "hub", *args, "--data", str(hub.data_dir)],
                          capture_output=True, text=True, timeout=120)


def test_x509_devices(mhub, tmp_path):
    # selfSigned: thumbprint from the certificate made by the CLI; certificateAuthority: issued by the hub CA
    assert cli(mhub, "device", "add", "x-self", "--auth", "selfSigned", "--make-cert", str(tmp_path)).returncode == 0
    assert cli(mhub, "device", "add", "x-ca", "--auth", "certificateAuthority",
               "--make-cert", str(tmp_path)).returncode == 0
    for dev in ("x-self", "x-ca"):
        with Device(mhub, dev, None, cert=(tmp_path / (dev + ".crt"), tmp_path / (dev + ".key"))) as d:
            assert d.wait_connack() == 0
            d.publish("devices/%s/messages/events/" % dev, b"x509").wait_for_publish(30)
    # the wrong certificate for a device, and a certificate for a SAS device: CONNACK 5
    for dev, cert in (("x-self", "x-ca"), ("x-ca", "x-self")):
        with Device(mhub, dev, None, cert=(tmp_path / (cert + ".crt"), tmp_path / (cert + ".key"))) as d:
            assert d.wait_connack() == 5
    mhub.add_device("sas-only")
    with Device(mhub, "sas-only", None, cert=(tmp_path / "x-ca.crt", tmp_path / "x-ca.key")) as d:
        assert d.wait_connack() == 5


def test_rotate_ca_on_a_running_hub(hub):
    old_ca = hub.ca_path
    key = hub.add_device("rot")
    out = cli(hub, "rotate-ca")
    assert out.returncode == 0, out.stderr
    pending = cli(hub, "ca", "--pending").stdout.strip()
    assert pending != str(old_ca)
    # not active yet: devices pinned to CA 1 still connect
    d = Device(hub, "rot", token(hub, "rot", key), ca=old_ca)
    assert d.wait_connack() == 0
    d.close()
    assert cli(hub, "rotate-ca", "--activate").returncode == 0
    assert str(hub.ca_path) == pending
    assert cli(hub, "ca").stdout.strip() == pending
    # the running hub now serves the CA 2 certificate: CA 1 pinning fails, CA 2 works
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(hub, ssl.create_default_context(cafile=str(old_ca)))
    d = Device(hub, "rot", token(hub, "rot", key), ca=pending)
    assert d.wait_connack() == 0
    d.close()
    bundle = cli(hub, "ca", "--all").stdout
    assert bundle.count("BEGIN CERTIFICATE") == 2
    assert old_ca.exists()


def test_device_ca_registered_with_ca_trust(mhub, tmp_path):
    from upyhub.hub import pki
    ca, ca_key = pki.make_ca("factory CA")
    cert, key = pki.issue(ca, ca_key, "x-ext", client=True)
    crt, keyf = pki.PKI.write_pair(cert, key, tmp_path, "x-ext")
    (tmp_path / "factory.pem").write_bytes(pki.cert_pem(ca))
    assert cli(mhub, "device", "add", "x-ext", "--auth", "certificateAuthority").returncode == 0
    # not yet trusted: refused (at the TLS layer or with CONNACK 5)
    try:
        with Device(mhub, "x-ext", None, cert=(crt, keyf)) as d:
            assert d.wait_connack() != 0
    except (ssl.SSLError, ConnectionError):
        pass
    assert cli(mhub, "ca", "--trust", str(crt)).returncode == 2  # a leaf is not a CA
    assert cli(mhub, "ca", "--trust", str(tmp_path / "factory.pem")).returncode == 0
    with Device(mhub, "x-ext", None, cert=(crt, keyf)) as d:
        assert d.wait_connack() == 0


def test_silent_client_dropped_after_keepalive(mhub):
    """A client that goes quiet is closed after 1.5 x its keep-alive (here 2 s), as Azure does."""
    key = mhub.add_device("quiet")
    body = (mqtt_str("MQTT") + bytes([4, 0xC2]) + (2).to_bytes(2, "big") + mqtt_str("quiet")
            + mqtt_str("%s/quiet/?api-version=2021-04-12" % mhub.hostname) + mqtt_str(token(mhub, "quiet", key)))
    assert len(body) < 16384  # remaining length: two bytes of varint
    ctx = ssl.create_default_context(cafile=str(mhub.ca_path))
    with socket.create_connection((mhub.host, mhub.mqtt_port), timeout=60) as raw:
        with ctx.wrap_socket(raw, server_hostname=mhub.hostname) as s:
            s.sendall(bytes([0x10, (len(body) & 0x7F) | 0x80, len(body) >> 7]) + body)
            assert s.recv(4) == bytes([0x20, 2, 0, 0])  # CONNACK accepted
            wait_for(lambda: mhub.service.get_device("quiet")["connectionState"] == "Connected")
            assert s.recv(1) == b""  # then nothing from us: the hub closes the connection
    assert "keep-alive expired" in mhub.log()
