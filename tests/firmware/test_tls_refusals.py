"""The firmware refuses every server it cannot verify, and never sends its token there.

Each case: the real firmware (.mpy on the unix port) is pointed at a small CPython server that
records everything it receives; the device must log a TLS refusal, retry with backoff, and the
server must never see an MQTT CONNECT (which would carry the SAS token). A control case with
the right certificate shows the recorder does see the CONNECT when TLS is fine."""
import datetime
import warnings

import pytest

from upyhub import sim

from fwtools import HUBNAME, new_key, server_ctx


def _flash(tmp_path, pki, port, key):
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname=HUBNAME, device_id="dev-refuse", device_key=key,
                    ca_pem=pki["ca"].cert_pem.bytes(), port=port, keepalive=30)
    return flash


def _never_sent_token(rec, dev, key):
    assert b"MQTT" not in bytes(rec.received)  # no CONNECT packet went out
    assert b"SharedAccessSignature" not in bytes(rec.received)
    assert key not in dev.log()
    assert "SharedAccessSignature" not in dev.log()


def _run_refusal(tmp_path, pki, device, rec, reason):
    key = new_key()
    dev = device(_flash(tmp_path, pki, rec.port, key))
    m = dev.wait_for(r"iothub: TLS refused: (.*)")
    assert reason in m[0].group(1), m[0].group(1)
    dev.wait_for(r"iothub: retry in \d+ ms \(attempt 2\)", timeout=90)  # it tried again, with backoff
    assert rec.connections >= 2
    dev.stop()
    _never_sent_token(rec, dev, key)
    return dev


def test_control_right_server_gets_connect(tmp_path, pki, device, recorder):
    rec = recorder(server_ctx(pki["ca"].issue_cert(HUBNAME)))
    key = new_key()
    dev = device(_flash(tmp_path, pki, rec.port, key))
    deadline_dev = dev  # the recorder never answers CONNECT: the device times out and retries
    deadline_dev.wait_for(r"iothub: connect failed", timeout=90)
    assert rec.handshakes[0] == "ok TLSv1.2"
    data = bytes(rec.received)
    assert data[0] == 0x10 and b"MQTT" in data  # the CONNECT did arrive
    assert ("%s/dev-refuse/?api-version=2021-04-12" % HUBNAME).encode() in data
    assert b"SharedAccessSignature sr=" in data
    assert "SharedAccessSignature" not in dev.log() and key not in dev.log()


def test_server_from_another_ca(tmp_path, pki, device, recorder):
    rec = recorder(server_ctx(pki["other"].issue_cert(HUBNAME)))
    _run_refusal(tmp_path, pki, device, rec, "handshake with %s failed" % HUBNAME)


def test_valid_cert_for_wrong_hostname(tmp_path, pki, device, recorder):
    rec = recorder(server_ctx(pki["ca"].issue_cert("evil.azure-devices.net", "127.0.0.1")))
    _run_refusal(tmp_path, pki, device, rec, "handshake with %s failed" % HUBNAME)


def test_expired_server_cert(tmp_path, pki, device, recorder):
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = pki["ca"].issue_cert(HUBNAME, not_before=now - datetime.timedelta(days=30),
                                not_after=now - datetime.timedelta(days=1))
    rec = recorder(server_ctx(cert))
    _run_refusal(tmp_path, pki, device, rec, "handshake with %s failed" % HUBNAME)


def test_plain_tcp_endpoint(tmp_path, pki, device, recorder):
    rec = recorder(None)
    _run_refusal(tmp_path, pki, device, rec, "handshake with %s failed" % HUBNAME)
    assert bytes(rec.received)[:1] == b"\x16"  # all it ever got was a TLS ClientHello


def test_tls11_only_server(tmp_path, pki, device, recorder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = server_ctx(pki["ca"].issue_cert(HUBNAME), tls11=True)
    rec = recorder(ctx)
    dev = _run_refusal(tmp_path, pki, device, rec, "TLSv1.1 only; TLS 1.2 is the minimum")
    # the handshake itself completed at TLS 1.1 (this mbedtls allows it): the check after it is what refuses
    assert rec.handshakes and rec.handshakes[0] == "ok TLSv1.1", rec.handshakes
    assert dev


@pytest.fixture(autouse=True)
def _no_fw_output_leak(capfd):
    yield
    out, err = capfd.readouterr()
    assert "SharedAccessSignature" not in out + err
