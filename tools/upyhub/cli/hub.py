"""upyhub hub ...: the local IoT Hub (PKI, registry, policies, serve, and service-API verbs).

Exit status: 0 success; 1 a failure at run time (hub not running or unreachable, device not found, port
busy, the hub refused the request); 2 a usage error (bad option or argument, malformed JSON).
List and show verbs take `-o json|table` (list verbs default to a table, show verbs to JSON, as az does).
"""
import argparse
import functools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from upyhub import files, sas
from upyhub.errors import UsageError

DEFAULT_DATA = ".upyhub"
DETACH_WAIT = 90  # seconds `serve --detach` waits for the hub to report its ports


class _Failure(Exception):
    """A run-time failure found by a verb: one line on stderr, exit status 1."""


def add_service_args(v):
    """How a verb finds the hub's service API (read by _service); --data comes with the verb."""
    v.add_argument("--connection-string", metavar="CS",
                   help="policy connection string (default: the hub in --data, policy 'service')")
    v.add_argument("--host", help="address of the hub's API (default: the running hub of --data)")
    v.add_argument("--https-port", type=int, help="API port (default: the running hub of --data)")
    v.add_argument("--ca", help="CA certificate to verify the hub (default: the CA in --data)")


def _output_arg(v, default):
    v.add_argument("-o", "--output", choices=("json", "table"), default=default,
                   help="output format (default %s)" % default)


def _runtime(func):
    """Run a verb; run-time failures (the hub's state, the network) are one line and exit status 1."""
    from upyhub.hub import HubError

    @functools.wraps(func)
    def run(args):
        try:
            return func(args)
        except (HubError, _Failure) as e:
            print("upyhub: error: %s" % e, file=sys.stderr)
            return 1
        except OSError as e:  # the data folder or a file in it cannot be made or read
            where = " (%s)" % e.filename if e.filename else ""
            print("upyhub: error: %s%s" % (e.strerror or type(e).__name__, where), file=sys.stderr)
            return 1
    return run


def register(sub):
    p = sub.add_parser("hub", help="the local Azure IoT Hub stand-in",
                       description="A local IoT Hub: registry, policies, MQTT/TLS device endpoint, HTTPS service "
                                   "API. Exit status 0 ok, 1 run-time failure, 2 usage error.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", default=DEFAULT_DATA, metavar="DIR",
                        help="hub state folder (default %s in the working directory)" % DEFAULT_DATA)
    hs = p.add_subparsers(dest="hub_verb", metavar="ACTION", parser_class=type(p))
    hs.required = True

    def verb(name, func, help_, parent=hs):
        v = parent.add_parser(name, help=help_, description=help_, parents=[common])
        v.set_defaults(func=_runtime(func))
        return v

    def group(name, help_, parent=hs):
        """`upyhub hub NAME ACTION`: a sub-command that takes an action of its own."""
        g = parent.add_parser(name, help=help_, description=help_)
        actions = g.add_subparsers(dest=name.replace("-", "_") + "_verb", metavar="ACTION", parser_class=type(p))
        actions.required = True
        return actions

    v = verb("init", cmd_init, "create the hub's CA and server certificate (and the registry, and the DPS ID scope)")
    v.add_argument("--hostname", default=None, help="hub hostname (default localhub.azure-devices.net)")
    v.add_argument("--dps-hostname", default=None,
                   help="the local DPS's hostname, also in the server certificate "
                        "(default global.azure-devices-provisioning.net)")
    v.add_argument("--force", action="store_true", help="replace existing CA and server keys")

    v = verb("ca", cmd_ca, "print the path of the CA certificate devices pin (or its PEM)")
    v.add_argument("--pem", action="store_true", help="print the PEM instead of the path")
    v.add_argument("--all", action="store_true", help="every CA generation (PEM bundle): for devices during rotation")
    v.add_argument("--pending", action="store_true", help="the CA created by rotate-ca and not yet active")
    v.add_argument("--trust", metavar="PEM",
                   help="register a device CA: certificateAuthority devices whose chain ends at it "
                        "(CN = device id, intermediates sent by the device) may connect")

    v = verb("rotate-ca", cmd_rotate, "create a new CA and server certificate (old CAs are kept); "
             "--activate switches the hub to it")
    v.add_argument("--activate", action="store_true",
                   help="serve the pending CA's certificate from now on (a running hub switches at the next "
                        "connection); without a pending CA, create one and activate it")

    ds = group("device", "the identity registry")
    v = verb("add", cmd_device_add, "add a device", ds)
    v.add_argument("device_id", help="device id (up to 128 of IoT Hub's allowed characters)")
    v.add_argument("--auth", choices=("sas", "selfSigned", "certificateAuthority"), default="sas",
                   help="authentication type (default sas)")
    v.add_argument("--primary-key", help="sas: base64 key (default: 32 random bytes)")
    v.add_argument("--secondary-key", help="sas: base64 key (default: 32 random bytes)")
    v.add_argument("--cert", metavar="PEM",
                   help="selfSigned: the device certificate (its SHA-256 thumbprint is registered)")
    v.add_argument("--primary-thumbprint", metavar="HEX",
                   help="selfSigned: SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint")
    v.add_argument("--secondary-thumbprint", metavar="HEX", help="selfSigned: a second accepted thumbprint")
    v.add_argument("--make-cert", metavar="DIR",
                   help="x509: also create the device certificate and key in DIR (self-signed, or from the hub CA)")
    v.add_argument("--disabled", action="store_true", help="add it disabled")
    v = verb("show", cmd_device_show, "show a device (keys only when asked)", ds)
    v.add_argument("device_id", help="device id")
    v.add_argument("--keys", action="store_true", help="include the keys")
    v.add_argument("--connection-string", action="store_true", help="print the device connection string only")
    _output_arg(v, "json")
    v = verb("list", cmd_device_list, "list devices", ds)
    _output_arg(v, "table")
    for name, func in (("enable", cmd_device_enable), ("disable", cmd_device_disable),
                       ("remove", cmd_device_remove)):
        verb(name, func, name + " a device", ds).add_argument("device_id", help="device id")
    v = verb("regenerate-key", cmd_device_regen, "replace a device's primary or secondary key", ds)
    v.add_argument("device_id", help="device id")
    v.add_argument("--key", choices=("primary", "secondary"), default="primary", help="which key (default primary)")

    ps = group("policy", "shared access policies")
    v = verb("list", cmd_policy_list, "list policies and their permissions", ps)
    _output_arg(v, "table")
    v = verb("show", cmd_policy_show, "show a policy (keys only when asked)", ps)
    v.add_argument("name", help="policy name (see `upyhub hub policy list`)")
    v.add_argument("--keys", action="store_true", help="include the keys")
    v.add_argument("--connection-string", action="store_true", help="print the policy connection string only")
    _output_arg(v, "json")

    v = verb("serve", cmd_serve, "run the hub (in the foreground; --detach: in the background)")
    v.add_argument("--port", type=int, default=8883, help="MQTT/TLS port (default 8883; 0 picks a free one)")
    v.add_argument("--https-port", type=int, default=8443, help="service API port (default 8443; 0: free one)")
    v.add_argument("--bind", default="0.0.0.0", help="address to listen on (default all; 127.0.0.1 for local)")
    v.add_argument("--dps-port", type=int, default=None,
                   help="DPS (MQTT/TLS) port (default 8884; with --port 0 a free one too; 0 picks a free one)")
    v.add_argument("--dps-bind", default=None, metavar="ADDR",
                   help="address the DPS listens on (default: --bind); e.g. a second loopback address to serve "
                        "DPS on 8883 next to the hub")
    v.add_argument("--detach", action="store_true",
                   help="start the hub in the background, return once it serves (log: DIR/hub.log; "
                        "stop it with `upyhub hub stop`)")
    v.add_argument("--max-pending", type=int, default=None, metavar="N",
                   help="connections per address that may be in TLS or CONNECT at once (default 100)")
    v.add_argument("--handshake-timeout", type=float, default=None, metavar="S",
                   help="seconds a device connection (MQTT, DPS) has from accept to a finished TLS handshake "
                        "(default 5, at most 600; more for slow clients such as an emulated board)")
    v.add_argument("--verbose", action="store_true", help="debug logging")

    verb("stop", cmd_stop, "stop the hub serving --data (started with serve --detach, or in another terminal)")

    cs = group("c2d", "cloud-to-device messages")
    v = verb("send", cmd_c2d_send, "send a C2D message (held while the device is offline)", cs)
    v.add_argument("device_id", help="device id")
    v.add_argument("body", help="message body (text)")
    v.add_argument("--prop", action="append", default=[], metavar="K=V", help="application property (repeatable)")
    add_service_args(v)

    ms = group("method", "direct methods")
    v = verb("invoke", cmd_method_invoke, "invoke a direct method and print the device's answer", ms)
    v.add_argument("device_id", help="device id")
    v.add_argument("name", help="method name")
    v.add_argument("--payload", default="null", help="JSON payload (default null)")
    v.add_argument("--timeout", type=int, default=30, help="seconds to wait for the answer (1..300)")
    add_service_args(v)

    ts = group("twin", "device twins")
    v = verb("show", cmd_twin_show, "print a device twin", ts)
    v.add_argument("device_id", help="device id")
    _output_arg(v, "json")
    add_service_args(v)
    v = verb("update", cmd_twin_update, "patch desired properties (and tags)", ts)
    v.add_argument("device_id", help="device id")
    v.add_argument("desired", help='JSON object, e.g. \'{"interval": 30}\' (null deletes a property)')
    v.add_argument("--tags", metavar="JSON", help="JSON object merged into the twin's tags")
    add_service_args(v)

    from upyhub.cli import _hub_dps, _hub_tokens
    _hub_dps.register(verb, group)
    _hub_tokens.register(verb, group)

    v = verb("monitor", cmd_monitor, "follow telemetry live (like az iot hub monitor-events)")
    v.add_argument("--device", help="only this device")
    v.add_argument("--from-start", action="store_true", help="print stored telemetry first")
    v.add_argument("--count", type=int, help="stop after this many messages")
    add_service_args(v)


# --- helpers ---
def _pki(args):
    from upyhub.hub import pki
    return pki.PKI(args.data)


def _registry(args, must_exist=True):
    from upyhub.hub import registry
    if must_exist and not (pathlib.Path(args.data) / "hub.db").exists():
        raise _Failure("no hub in %s: run `upyhub hub init` first" % args.data)
    return registry.Registry(args.data)


def _json_arg(text, what):
    try:
        return json.loads(text)
    except ValueError:
        raise UsageError("%s is not valid JSON" % what) from None


def _service(args):
    from upyhub.hub import client
    return client.local(args.data, "service", host=args.host, port=args.https_port, ca=args.ca,
                        connection_string=args.connection_string)


def _call(svc, fn, *a, **kw):
    """A service-API call: the hub's 400 is a usage error (2), any other refusal or a network failure is 1."""
    import http.client

    from upyhub.hub.client import ServiceError, describe_network_error
    try:
        return fn(*a, **kw)
    except ServiceError as e:
        if e.status == 400:
            raise UsageError("hub answered 400: %s" % e.message) from None
        raise _Failure("hub answered %d: %s" % (e.status, e.message)) from None
    except (OSError, http.client.HTTPException) as e:
        raise _Failure(describe_network_error(e, svc.host, svc.port)) from None


def _table(rows, columns):
    """Rows (dicts) as aligned text columns, az's `-o table`."""
    widths = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)).rstrip() for r in rows]
    print("\n".join(lines))


def _show(doc, output, columns=None):
    if output == "table":
        flat = {k: v for k, v in doc.items() if not isinstance(v, (dict, list))}
        _table([flat], columns or list(flat))
    else:
        print(json.dumps(doc, indent=2))


def _device_doc(reg, row, keys):
    doc = reg.device_json(row, keys=keys)
    if not keys:
        doc["authentication"].pop("symmetricKey")
    return doc


# --- verbs ---
def cmd_init(args):
    from upyhub.hub import dps, pki
    hostname = sas.check_hostname(args.hostname or pki.DEFAULT_HOSTNAME)
    dps_hostname = sas.check_hostname(args.dps_hostname or pki.DEFAULT_DPS_HOSTNAME)
    p = _pki(args)
    ca = p.init(hostname, force=args.force, dps_hostname=dps_hostname)
    reg = _registry(args, must_exist=False)
    try:
        scope = dps.Store(reg).id_scope()
    finally:
        reg.close()
    print("hub %s initialised in %s" % (hostname, args.data))
    print("CA certificate (devices pin this): %s" % ca)
    print("DPS %s, ID scope %s" % (dps_hostname, scope))


def cmd_ca(args):
    p = _pki(args)
    if args.trust:
        from upyhub.hub import pki
        pem = files.read_file(args.trust, "CA certificate")
        cert = pki.load_cert(pem)
        if not pki.is_ca(cert):
            raise UsageError("%s is not a CA certificate (basicConstraints CA:TRUE)" % args.trust)
        p.register_ca(cert)
        print("devices issued by %s may now connect as certificateAuthority devices" % cert.subject.rfc4514_string())
        return
    if args.all:
        sys.stdout.write("".join(p.ca_path(g).read_text() for g in p.generations()))
        return
    gen = p.active
    if args.pending:
        gen = p.pending()
        if gen is None:
            raise _Failure("no pending CA: run `upyhub hub rotate-ca` first")
    print(p.ca_path(gen).read_text().rstrip() if args.pem else p.ca_path(gen))


def cmd_rotate(args):
    p = _pki(args)
    if not args.activate:
        gen = p.rotate()
        print("created CA %d: %s" % (gen, p.ca_path(gen)))
        print("give it to devices, then switch with `upyhub hub rotate-ca --activate`")
        return
    if p.pending() is None:
        p.rotate()
    gen = p.activate()
    print("the hub now serves a certificate from CA %d: %s" % (gen, p.ca_path(gen)))


def cmd_device_add(args):
    sas.check_device_id(args.device_id)
    p = _pki(args)
    p.state()
    reg = _registry(args)
    if reg.get_device(args.device_id):
        raise _Failure("device %r already exists" % args.device_id)
    ptp, stp = args.primary_thumbprint, args.secondary_thumbprint
    if args.auth == "sas" and (args.cert or args.make_cert or ptp or stp):
        raise UsageError("--cert, --make-cert and thumbprints are for --auth selfSigned or certificateAuthority")
    if args.auth != "sas" and (args.primary_key or args.secondary_key):
        raise UsageError("keys are for --auth sas")
    if args.auth == "selfSigned":
        made = thumbprint_of(args, args.device_id)
        ptp = ptp or made
        if not ptp:
            raise UsageError("a selfSigned device needs --cert, --make-cert or --primary-thumbprint")
    row = reg.put_device(args.device_id, auth=args.auth, status="disabled" if args.disabled else "enabled",
                         primary_key=args.primary_key, secondary_key=args.secondary_key,
                         primary_thumb=ptp, secondary_thumb=stp, create_only=True)
    if args.auth == "certificateAuthority" and args.make_cert:
        crt, _ = p.issue_device_cert(args.device_id, args.make_cert)
        print("certificate and key written: %s (+ .key)" % crt)
    print("added %s (%s, %s)" % (row["id"], row["auth"], row["status"]))


def thumbprint_of(args, cn):
    """The SHA-256 thumbprint of --cert, or of a self-signed certificate for `cn` made in --make-cert DIR
    (None when neither is given)."""
    from upyhub.hub import pki
    if args.cert:
        cert = pki.load_cert(files.read_file(args.cert, "device certificate"))
    elif args.make_cert:
        cert, key = pki.self_signed_client(cn)
        crt, _ = pki.PKI.write_pair(cert, key, args.make_cert, cn)
        print("certificate and key written: %s (+ .key)" % crt)
    else:
        return None
    return pki.thumbprints(pki.der(cert))[1]


def cmd_device_show(args):
    reg = _registry(args)
    row = reg.require_device(args.device_id)
    if args.connection_string:
        if row["auth"] != "sas":
            print("HostName=%s;DeviceId=%s;x509=true" % (_pki(args).hostname, row["id"]))
        else:
            print("HostName=%s;DeviceId=%s;SharedAccessKey=%s" % (_pki(args).hostname, row["id"], row["primary_key"]))
        return
    doc = _device_doc(reg, row, args.keys)
    _show(dict(doc, authenticationType=doc["authentication"]["type"]) if args.output == "table" else doc,
          args.output, ["deviceId", "status", "authenticationType", "connectionState", "cloudToDeviceMessageCount"])


def cmd_device_list(args):
    reg = _registry(args)
    docs = [_device_doc(reg, r, keys=False) for r in reg.list_devices()]
    if args.output == "json":
        print(json.dumps(docs, indent=2))
        return
    if not docs:
        print("no devices (add one with `upyhub hub device add ID`)")
        return
    _table([dict(d, authenticationType=d["authentication"]["type"]) for d in docs],
           ["deviceId", "status", "authenticationType", "connectionState", "cloudToDeviceMessageCount"])


def _status(args, status):
    reg = _registry(args)
    reg.set_status(args.device_id, status)
    print("%s %s" % (args.device_id, status))


def cmd_device_enable(args):
    _status(args, "enabled")


def cmd_device_disable(args):
    _status(args, "disabled")


def cmd_device_remove(args):
    if not _registry(args).delete_device(args.device_id):
        raise _Failure("no device %r in the registry" % args.device_id)
    print("removed %s" % args.device_id)


def cmd_device_regen(args):
    _registry(args).regenerate_key(args.device_id, args.key)
    print("new %s key for %s (see it with `upyhub hub device show %s --keys`)"
          % (args.key, args.device_id, args.device_id))


def cmd_policy_list(args):
    docs = [{"keyName": p["name"], "rights": p["rights"]} for p in _registry(args).list_policies()]
    if args.output == "json":
        print(json.dumps(docs, indent=2))
    else:
        _table([dict(d, rights=", ".join(d["rights"])) for d in docs], ["keyName", "rights"])


def cmd_policy_show(args):
    reg = _registry(args)
    if args.connection_string:
        print(reg.connection_string(_pki(args).hostname, args.name))
        return
    p = reg.get_policy(args.name)
    if p is None:
        raise _Failure("no shared access policy %r (see `upyhub hub policy list`)" % args.name)
    doc = {"keyName": p["name"], "rights": p["rights"]}
    if args.keys:
        doc.update(primaryKey=p["primary_key"], secondaryKey=p["secondary_key"])
    if args.output == "table":
        _table([dict(doc, rights=", ".join(doc["rights"]))], list(doc))
    else:
        print(json.dumps(doc, indent=2))


def cmd_serve(args):
    from upyhub.hub import broker, dps, server
    if args.dps_port is None:  # a hub on picked ports (tests, demos) picks its DPS port too
        args.dps_port = 0 if args.port == 0 else dps.DEFAULT_PORT
    for name in ("port", "https_port", "dps_port"):
        if not 0 <= getattr(args, name) <= 65535:
            raise UsageError("--%s must be 0..65535" % name.replace("_", "-"))
    if args.max_pending is not None and not 1 <= args.max_pending <= 100000:
        raise UsageError("--max-pending must be 1..100000")
    if args.handshake_timeout is None:
        args.handshake_timeout = broker.HANDSHAKE_TIMEOUT
    broker.check_handshake_timeout(args.handshake_timeout, "--handshake-timeout")
    _pki(args).state()
    data = pathlib.Path(args.data)
    if server.running_pid(data):
        raise _Failure("a hub is already serving %s (%s)" % (data, server.running_summary(data)))
    if args.detach:
        return _detach(args, data)
    server.serve(args.data, args.bind, args.port, args.https_port, args.verbose,
                 args.max_pending or broker.PENDING_PER_ADDRESS, args.dps_port, args.dps_bind,
                 args.handshake_timeout)


def _detach(args, data):
    """`serve --detach`: the same serve in a new session, logging to DATA/hub.log; back once it serves."""
    from upyhub.hub import server
    argv = [sys.executable, "-m", "upyhub", "hub", "serve", "--data", str(data), "--bind", args.bind,
            "--port", str(args.port), "--https-port", str(args.https_port), "--dps-port", str(args.dps_port),
            "--handshake-timeout", repr(args.handshake_timeout)]
    argv += (["--max-pending", str(args.max_pending)] if args.max_pending else []) + \
        (["--dps-bind", args.dps_bind] if args.dps_bind else []) + (["--verbose"] if args.verbose else [])
    log_path = data / "hub.log"
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + DETACH_WAIT
    while time.monotonic() < deadline:
        info = _serve_info(data)
        if info.get("pid") == proc.pid:
            print("hub serving %s (pid %d): MQTT/TLS %s:%d, HTTPS API %s:%d, DPS %s:%d; log %s; "
                  "stop: upyhub hub stop --data %s" % (data, proc.pid, args.bind, info["mqtt_port"], args.bind,
                                                       info["https_port"], info["dps_host"], info["dps_port"],
                                                       log_path, data))
            return 0
        if proc.poll() is not None:
            lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
            raise _Failure("the hub did not start: %s" % (lines[-1] if lines else "exit %d" % proc.returncode))
        time.sleep(0.05)
    proc.terminate()
    raise _Failure("the hub did not report its ports within %d s (see %s)" % (DETACH_WAIT, log_path))


def _serve_info(data):
    try:
        info = json.loads((data / "serve.json").read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def cmd_stop(args):
    from upyhub.hub import server
    data = pathlib.Path(args.data)
    pid = server.running_pid(data)
    if not pid:
        raise _Failure("no hub is serving %s" % data)
    if pid < 0:
        raise _Failure("a hub is serving %s but its pid is unknown: stop it where it runs" % data)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 30
    while server.running_pid(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    if server.running_pid(data):
        raise _Failure("the hub (pid %d) did not stop within 30 s" % pid)
    print("stopped the hub serving %s (pid %d)" % (data, pid))


def cmd_c2d_send(args):
    props = {}
    for kv in args.prop:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise UsageError("--prop takes K=V, not %r" % kv)
        props[k] = v
    sas.check_device_id(args.device_id)
    svc = _service(args)
    doc = _call(svc, svc.send_c2d, args.device_id, args.body, props)
    print("queued message %s for %s" % (doc["messageId"], args.device_id))


def cmd_method_invoke(args):
    payload = _json_arg(args.payload, "--payload")
    if not 1 <= args.timeout <= 300:
        raise UsageError("--timeout must be 1..300 seconds")
    svc = _service(args)
    status, answer = _call(svc, svc.invoke_method, args.device_id, args.name, payload, args.timeout)
    print(json.dumps({"status": status, "payload": answer}, indent=2))


def cmd_twin_show(args):
    svc = _service(args)
    _show(_call(svc, svc.get_twin, args.device_id), args.output,
          ["deviceId", "status", "connectionState", "version", "etag"])


def cmd_twin_update(args):
    desired = _json_arg(args.desired, "desired")
    tags = _json_arg(args.tags, "--tags") if args.tags is not None else None
    if not isinstance(desired, dict) or not isinstance(tags, (dict, type(None))):
        raise UsageError("desired and --tags must be JSON objects")
    svc = _service(args)
    print(json.dumps(_call(svc, svc.update_twin, args.device_id, desired, tags=tags), indent=2))


def cmd_monitor(args):
    svc = _service(args)
    since = 0
    if not args.from_start:
        rows = _call(svc, svc.telemetry, args.device, 0)
        while rows:  # skip what is stored: follow from now
            since = rows[-1]["seq"]
            rows = _call(svc, svc.telemetry, args.device, since)
    seen = 0
    print("following telemetry%s (Ctrl-C stops)" % (" of " + args.device if args.device else ""), file=sys.stderr)
    while args.count is None or seen < args.count:
        for row in _call(svc, svc.telemetry, args.device, since, 20):
            since = row["seq"]
            print(json.dumps({"deviceId": row["deviceId"], "enqueuedTime": row["enqueuedTime"],
                              "properties": row["properties"], "body": row["body"]}), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
        else:
            time.sleep(0.05)
