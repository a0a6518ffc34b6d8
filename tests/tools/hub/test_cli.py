"""`upyhub hub ...` verbs: offline registry/PKI verbs, service-API verbs against a running hub, bad input."""
import json
import subprocess
import sys

import pytest

from upyhub import sas
from hubdev import Device, token, wait_for

pytestmark = pytest.mark.slow


def run(data, *args):
    return subprocess.run([sys.executable, "-m", "upyhub", "hub", *args, "--data", str(data)],
                          capture_output=True, text=True, timeout=120)


def ok(data, *args):
    out = run(data, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def bad(data, *args, status=2):
    """A usage error (2) or, with status=1, a failure at run time: one line on stderr either way."""
    out = run(data, *args)
    assert out.returncode == status, (args, out.returncode, out.stdout, out.stderr)
    assert out.stderr.startswith("upyhub: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr
    return out.stderr


def fails(data, *args):
    return bad(data, *args, status=1)


def test_offline_verbs(tmp_path):
    d = tmp_path / "hub"
    fails(d, "device", "list")  # no hub yet
    fails(d, "serve", "--port", "0")
    assert "ca-1.pem" in ok(d, "init")
    ca = (d / "pki" / "ca-1.pem").read_bytes()
    assert "already exists" in fails(d, "init")
    assert (d / "pki" / "ca-1.pem").read_bytes() == ca  # nothing overwritten
    assert ok(d, "ca").strip() == str(d / "pki" / "ca-1.pem")
    assert ok(d, "ca", "--pem").strip() == ca.decode().strip()

    ok(d, "device", "add", "dev1")
    shown = json.loads(ok(d, "device", "show", "dev1"))
    assert shown["deviceId"] == "dev1" and "symmetricKey" not in shown["authentication"]
    keys = json.loads(ok(d, "device", "show", "dev1", "--keys"))["authentication"]["symmetricKey"]
    assert keys["primaryKey"] and keys["secondaryKey"] and keys["primaryKey"] != keys["secondaryKey"]
    cs = sas.parse_connection_string(ok(d, "device", "show", "dev1", "--connection-string").strip())
    assert cs == {"HostName": "localhub.azure-devices.net", "DeviceId": "dev1", "SharedAccessKey": keys["primaryKey"]}
    for secret in keys.values():
        assert secret not in ok(d, "device", "list") + ok(d, "device", "show", "dev1")

    ok(d, "device", "disable", "dev1")
    assert "disabled" in ok(d, "device", "list")
    ok(d, "device", "enable", "dev1")
    ok(d, "device", "regenerate-key", "dev1", "--key", "secondary")
    keys2 = json.loads(ok(d, "device", "show", "dev1", "--keys"))["authentication"]["symmetricKey"]
    assert keys2["primaryKey"] == keys["primaryKey"] and keys2["secondaryKey"] != keys["secondaryKey"]

    assert "iothubowner" in ok(d, "policy", "list") and "DeviceConnect" in ok(d, "policy", "list")
    pol = json.loads(ok(d, "policy", "show", "registryRead"))
    assert pol == {"keyName": "registryRead", "rights": ["RegistryRead"]}
    assert "SharedAccessKeyName=service;" in ok(d, "policy", "show", "service", "--connection-string")

    # bad input: one line, exit 2, nothing written
    fails(d, "device", "add", "dev1")  # exists
    bad(d, "device", "add", "bad/id")
    bad(d, "device", "add", "dev9", "--primary-key", "not base64!")
    bad(d, "device", "add", "dev9", "--auth", "selfSigned")  # no cert or thumbprint
    bad(d, "device", "add", "dev9", "--auth", "selfSigned", "--primary-thumbprint", "xyz")
    fails(d, "device", "show", "nosuch")
    fails(d, "device", "remove", "nosuch")
    fails(d, "policy", "show", "nosuch")
    fails(d, "ca", "--pending")
    bad(d, "serve", "--port", "70000")
    bad(d, "device", "frobnicate")
    bad(d, "init", "--hostname", "not a hostname")
    assert "dev9" not in ok(d, "device", "list")

    ok(d, "device", "remove", "dev1")
    assert "no devices" in ok(d, "device", "list")
    assert "created CA 2" in ok(d, "rotate-ca")
    fails(d, "rotate-ca")  # one is already waiting
    assert "CA 2" in ok(d, "rotate-ca", "--activate")
    assert ok(d, "ca").strip().endswith("ca-2.pem")
    assert (d / "pki" / "ca-1.pem").read_bytes() == ca  # kept for devices still pinned to it
    ok(d, "init", "--force")
    assert (d / "pki" / "ca-1.pem").read_bytes() != ca


def test_service_verbs_against_a_running_hub(hub):
    d = hub.data_dir
    summary = hub.log()
    assert hub.hostname in summary and str(hub.ca_path) in summary and "mqtt_port=%d" % hub.mqtt_port in summary
    ok(d, "device", "add", "cli-dev")
    # offline: the C2D message is queued, the method is a 404
    assert "queued message" in ok(d, "c2d", "send", "cli-dev", "hello", "--prop", "k=v")
    assert hub.service.get_device("cli-dev")["cloudToDeviceMessageCount"] == 1
    assert "404" in fails(d, "method", "invoke", "cli-dev", "reboot", "--timeout", "2")
    twin = json.loads(ok(d, "twin", "update", "cli-dev", '{"interval": 9}'))
    assert twin["properties"]["desired"]["interval"] == 9
    assert json.loads(ok(d, "twin", "show", "cli-dev"))["properties"]["desired"]["interval"] == 9
    bad(d, "twin", "update", "cli-dev", "{not json")
    bad(d, "twin", "update", "cli-dev", "[1]")
    bad(d, "c2d", "send", "cli-dev", "x", "--prop", "novalue")
    bad(d, "method", "invoke", "cli-dev", "m", "--payload", "{")
    assert "404" in fails(d, "twin", "show", "nosuch")
    # a policy without ServiceConnect is refused by the hub
    assert "401" in fails(d, "twin", "update", "cli-dev", "{}", "--connection-string",
                        hub.connection_string("registryRead"))

    key = json.loads(ok(d, "device", "show", "cli-dev", "--keys"))["authentication"]["symmetricKey"]["primaryKey"]
    with Device(hub, "cli-dev", token(hub, "cli-dev", key)) as dev:
        assert dev.wait_connack() == 0
        dev.subscribe("devices/cli-dev/messages/devicebound/#")
        _, body = dev.wait_message("devices/cli-dev/messages/devicebound/")
        assert body == b"hello"
        dev.publish("devices/cli-dev/messages/events/unit=C", b'{"t": 20}').wait_for_publish(30)
        wait_for(lambda: hub.service.telemetry(device="cli-dev"))
        lines = ok(d, "monitor", "--from-start", "--count", "1", "--device", "cli-dev").splitlines()
        event = json.loads(lines[0])
        assert event["deviceId"] == "cli-dev" and event["body"] == '{"t": 20}' and event["properties"] == {"unit": "C"}


def test_output_formats_and_run_time_failures(tmp_path):
    d = tmp_path / "hub"
    ok(d, "init")
    ok(d, "device", "add", "fmt1")
    ok(d, "device", "add", "fmt2", "--auth", "selfSigned", "--primary-thumbprint", "AB" * 20)
    listed = json.loads(ok(d, "device", "list", "-o", "json"))
    assert [x["deviceId"] for x in listed] == ["fmt1", "fmt2"]
    assert all("symmetricKey" not in x["authentication"] for x in listed)
    table = ok(d, "device", "list").splitlines()
    assert table[0].split()[:3] == ["deviceId", "status", "authenticationType"] and len(table) == 4
    assert json.loads(ok(d, "device", "show", "fmt1", "-o", "json"))["deviceId"] == "fmt1"
    assert ok(d, "device", "show", "fmt2", "-o", "table").splitlines()[2].split()[:3] == \
        ["fmt2", "enabled", "selfSigned"]
    policies = json.loads(ok(d, "policy", "list", "-o", "json"))
    assert {"keyName": "registryRead", "rights": ["RegistryRead"]} in policies
    assert ok(d, "policy", "show", "service", "-o", "table").splitlines()[2].split() == ["service", "ServiceConnect"]
    bad(d, "device", "list", "-o", "yaml")
    # the network, one line each, exit 1
    assert "connection refused" in fails(d, "twin", "show", "fmt1", "--host", "127.0.0.1", "--https-port", "9")
    assert "cannot resolve" in fails(d, "twin", "show", "fmt1", "--host", "no.such.host.invalid",
                                     "--https-port", "9")
    assert "no local hub is running" in fails(d, "c2d", "send", "fmt1", "x")
    (tmp_path / "a-file").write_text("")
    assert "Not a directory" in fails(tmp_path / "a-file" / "hub", "init")
    # every option of every hub verb says what it does
    from upyhub.cli import build_parser
    parser = build_parser()
    hub = parser._subparsers._group_actions[0].choices["hub"]
    stack = [hub]
    while stack:
        p = stack.pop()
        for action in p._actions:
            if action.choices and isinstance(action.choices, dict):
                stack.extend(action.choices.values())
            elif action.dest != "help":
                assert action.help, (p.prog, action.dest)


def test_dps_and_token_service_verbs_offline(tmp_path):
    d = tmp_path / "hub"
    fails(d, "dps", "show")  # no hub yet
    fails(d, "dps", "enrollment", "list")
    assert "ID scope 0ne" in ok(d, "init")
    scope = json.loads(ok(d, "dps", "show"))["idScope"]
    assert ok(d, "dps", "show", "-o", "table").splitlines()[2].split()[:2] == [scope, "global.azure-devices-provisioning.net"]

    ok(d, "dps", "enrollment", "create", "cli-one", "--device-id", "cli.device")
    ok(d, "dps", "enrollment-group", "create", "cli-group", "--key-out", str(tmp_path / "group.key"))
    group_key = json.loads(ok(d, "dps", "enrollment-group", "show", "cli-group", "--keys"))["attestation"][
        "symmetricKey"]["primaryKey"]
    assert (tmp_path / "group.key").read_text().strip() == group_key
    assert oct((tmp_path / "group.key").stat().st_mode & 0o777) == "0o600"
    table = ok(d, "dps", "enrollment", "list").splitlines()
    assert table[0].split()[:3] == ["registrationId", "deviceId", "attestationType"]
    assert table[2].split()[:4] == ["cli-one", "cli.device", "symmetricKey", "enabled"]
    listed = json.loads(ok(d, "dps", "enrollment-group", "list", "-o", "json"))
    assert [g["enrollmentGroupId"] for g in listed] == ["cli-group"] and group_key not in json.dumps(listed)
    ok(d, "dps", "enrollment", "disable", "cli-one")
    assert json.loads(ok(d, "dps", "enrollment", "show", "cli-one"))["provisioningStatus"] == "disabled"
    assert "no registrations yet" in ok(d, "dps", "registration", "list")

    # usage errors: exit 2, nothing created
    leaf = tmp_path / "leaf.pem"
    from upyhub.hub import pki
    cert, _ = pki.self_signed_client("leaf")
    leaf.write_bytes(pki.cert_pem(cert))
    for args in (("enrollment", "create", "Bad_Id"), ("enrollment", "create", "cli-2", "--primary-key", "short"),
                 ("enrollment", "create", "cli-2", "--device-id", "bad/id"),
                 ("enrollment", "create", "cli-2", "--attestation", "x509"),
                 ("enrollment", "create", "cli-2", "--cert", str(leaf)),
                 ("enrollment", "create", "cli-2", "--attestation", "x509", "--primary-thumbprint", "xyz"),
                 ("enrollment-group", "create", "bad/group"),
                 ("enrollment-group", "create", "g2", "--attestation", "x509"),
                 ("enrollment-group", "create", "g2", "--attestation", "x509", "--ca-cert", str(leaf)),
                 ("enrollment-group", "create", "g2", "--attestation", "x509", "--ca-cert", str(tmp_path / "none")),
                 ("enrollment-group", "create", "g2", "--ca-cert", str(leaf)),
                 ("enrollment", "list", "-o", "yaml")):
        bad(d, "dps", *args)
    assert [e["registrationId"] for e in json.loads(ok(d, "dps", "enrollment", "list", "-o", "json"))] == ["cli-one"]
    # run-time failures: exit 1
    fails(d, "dps", "enrollment", "create", "cli-one")
    fails(d, "dps", "enrollment-group", "create", "CLI-GROUP")  # group ids are case-insensitive
    for verb in ("show", "enable", "disable", "remove"):
        fails(d, "dps", "enrollment", verb, "nosuch")
        fails(d, "dps", "enrollment-group", verb, "nosuch")
    fails(d, "dps", "registration", "show", "nosuch")
    fails(d, "dps", "registration", "remove", "nosuch")
    bad(d, "serve", "--dps-port", "70000")

    # the token service's verbs
    reg = tmp_path / "devices.csv"
    bad(d, "token-service", "device", "list", "--registry", str(reg))  # no such file
    ok(d, "token-service", "device", "add", "ts-1", "--registry", str(reg))
    for args in (("--ttl", "1"), ("--ttl", "90000"), ("--nonce-ttl", "0"), ("--port", "70000")):
        bad(d, "token-service", "serve", "--registry", str(reg), *args)
    bad(d, "token-service", "serve", "--registry", str(tmp_path / "none.csv"))
    bad(d, "token-service", "serve")  # --registry is required


def test_readme_dps_and_token_service_lines_run_as_written(tmp_path):
    """The README's command lines for the DPS and the token service (all but `serve`), in a fresh folder."""
    import pathlib
    import re
    import shlex

    from certhelpers import make_cert
    readme = (pathlib.Path(__file__).resolve().parents[3] / "README.md").read_text()
    blocks = []
    for heading in ("### The local DPS", "### The token service"):
        m = re.search(re.escape(heading) + r".*?```sh\n(.*?)```", readme, re.S)
        assert m, "README lost its %s example" % heading
        blocks.append(m.group(1))
    (tmp_path / "line1-ca.pem").write_bytes(make_cert("line 1 CA").pem)
    assert subprocess.run([sys.executable, "-m", "upyhub", "hub", "init"], cwd=tmp_path, capture_output=True,
                          timeout=120).returncode == 0
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines()]
    lines = [ln for ln in lines if ln and " serve" not in ln]
    assert len(lines) >= 12
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "upyhub"
        out = subprocess.run([sys.executable, "-m", "upyhub", *argv[1:]], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, (line, out.stderr)
    assert (tmp_path / "keys.csv").exists() and (tmp_path / "certs" / "cam-7.crt").exists()
