"""upyhub hub ...: the local IoT Hub (PKI, registry, policies, serve, and service-API verbs)."""
import argparse
import json
import pathlib
import sys
import time

from upyhub import files, sas
from upyhub.errors import UsageError

DEFAULT_DATA = ".upyhub"


def add_service_args(v):
    """How a verb finds the hub's service API (read by _service); --data comes with the verb."""
    v.add_argument("--connection-string", metavar="CS",
                   help="policy connection string (default: the hub in --data, policy 'service')")
    v.add_argument("--host", help="address of the hub's API (default: the running hub of --data)")
    v.add_argument("--https-port", type=int, help="API port (default: the running hub of --data)")
    v.add_argument("--ca", help="CA certificate to verify the hub (default: the CA in --data)")


def register(sub):
    p = sub.add_parser("hub", help="the local Azure IoT Hub stand-in",
                       description="A local IoT Hub: registry, policies, MQTT/TLS device endpoint, HTTPS service API.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", default=DEFAULT_DATA, metavar="DIR",
                        help="hub state folder (default %s in the working directory)" % DEFAULT_DATA)
    hs = p.add_subparsers(dest="hub_verb", metavar="ACTION", parser_class=type(p))
    hs.required = True

    def verb(name, func, help_, parent=hs):
        v = parent.add_parser(name, help=help_, description=help_, parents=[common])
        v.set_defaults(func=func)
        return v

    def group(name, help_):
        """`upyhub hub NAME ACTION`: a sub-command that takes an action of its own."""
        g = hs.add_parser(name, help=help_, description=help_)
        actions = g.add_subparsers(dest=name + "_verb", metavar="ACTION", parser_class=type(p))
        actions.required = True
        return actions

    v = verb("init", cmd_init, "create the hub's CA and server certificate (and the registry)")
    v.add_argument("--hostname", default=None, help="hub hostname (default localhub.azure-devices.net)")
    v.add_argument("--force", action="store_true", help="replace existing CA and server keys")

    v = verb("ca", cmd_ca, "print the path of the CA certificate devices pin (or its PEM)")
    v.add_argument("--pem", action="store_true", help="print the PEM instead of the path")
    v.add_argument("--all", action="store_true", help="every CA generation (PEM bundle): for devices during rotation")
    v.add_argument("--pending", action="store_true", help="the CA created by rotate-ca and not yet active")
    v.add_argument("--trust", metavar="PEM",
                   help="register a device CA: certificateAuthority devices it issues (CN = device id) may connect")

    v = verb("rotate-ca", cmd_rotate, "create a new CA and server certificate (old CAs are kept); "
             "--activate switches the hub to it")
    v.add_argument("--activate", action="store_true",
                   help="serve the pending CA's certificate from now on (a running hub switches at the next "
                        "connection); without a pending CA, create one and activate it")

    ds = group("device", "the identity registry")
    v = verb("add", cmd_device_add, "add a device", ds)
    v.add_argument("device_id")
    v.add_argument("--auth", choices=("sas", "selfSigned", "certificateAuthority"), default="sas")
    v.add_argument("--primary-key", help="base64 key (default: 32 random bytes)")
    v.add_argument("--secondary-key", help="base64 key (default: 32 random bytes)")
    v.add_argument("--cert", metavar="PEM", help="selfSigned: the device certificate (its SHA-256 thumbprint is registered)")
    v.add_argument("--primary-thumbprint")
    v.add_argument("--secondary-thumbprint")
    v.add_argument("--make-cert", metavar="DIR",
                   help="x509: also create the device certificate and key in DIR (self-signed, or from the hub CA)")
    v.add_argument("--disabled", action="store_true", help="add it disabled")
    v = verb("show", cmd_device_show, "show a device (keys only when asked)", ds)
    v.add_argument("device_id")
    v.add_argument("--keys", action="store_true", help="include the keys")
    v.add_argument("--connection-string", action="store_true", help="print the device connection string only")
    verb("list", cmd_device_list, "list devices", ds)
    for name, func in (("enable", cmd_device_enable), ("disable", cmd_device_disable),
                       ("remove", cmd_device_remove)):
        verb(name, func, name + " a device", ds).add_argument("device_id")
    v = verb("regenerate-key", cmd_device_regen, "replace a device's primary or secondary key", ds)
    v.add_argument("device_id")
    v.add_argument("--key", choices=("primary", "secondary"), default="primary")

    ps = group("policy", "shared access policies")
    verb("list", cmd_policy_list, "list policies and their permissions", ps)
    v = verb("show", cmd_policy_show, "show a policy (keys only when asked)", ps)
    v.add_argument("name")
    v.add_argument("--keys", action="store_true")
    v.add_argument("--connection-string", action="store_true", help="print the policy connection string only")

    v = verb("serve", cmd_serve, "run the hub in the foreground (Ctrl-C stops it)")
    v.add_argument("--port", type=int, default=8883, help="MQTT/TLS port (default 8883; 0 picks a free one)")
    v.add_argument("--https-port", type=int, default=8443, help="service API port (default 8443; 0: free one)")
    v.add_argument("--bind", default="0.0.0.0", help="address to listen on (default all; 127.0.0.1 for local)")
    v.add_argument("--verbose", action="store_true")

    cs = group("c2d", "cloud-to-device messages")
    v = verb("send", cmd_c2d_send, "send a C2D message (held while the device is offline)", cs)
    v.add_argument("device_id")
    v.add_argument("body")
    v.add_argument("--prop", action="append", default=[], metavar="K=V", help="application property (repeatable)")
    add_service_args(v)

    ms = group("method", "direct methods")
    v = verb("invoke", cmd_method_invoke, "invoke a direct method and print the device's answer", ms)
    v.add_argument("device_id")
    v.add_argument("name")
    v.add_argument("--payload", default="null", help="JSON payload (default null)")
    v.add_argument("--timeout", type=int, default=30, help="seconds to wait for the answer (1..300)")
    add_service_args(v)

    ts = group("twin", "device twins")
    v = verb("show", cmd_twin_show, "print a device twin", ts)
    v.add_argument("device_id")
    add_service_args(v)
    v = verb("update", cmd_twin_update, "patch desired properties", ts)
    v.add_argument("device_id")
    v.add_argument("desired", help='JSON object, e.g. \'{"interval": 30}\' (null deletes a property)')
    add_service_args(v)

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
        raise UsageError("no hub in %s: run `upyhub hub init` first" % args.data)
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


def _call(fn, *a, **kw):
    from upyhub.hub.client import ServiceError
    try:
        return fn(*a, **kw)
    except ServiceError as e:
        raise UsageError("hub answered %d: %s" % (e.status, e.message)) from None
    except OSError as e:
        raise UsageError("cannot reach the hub's service API: %s" % (e.strerror or type(e).__name__)) from None


def _print_device(reg, row, keys):
    doc = reg.device_json(row, keys=keys)
    if not keys:
        doc["authentication"].pop("symmetricKey")
    print(json.dumps(doc, indent=2))


# --- verbs ---
def cmd_init(args):
    from upyhub.hub import pki
    hostname = sas.check_hostname(args.hostname or pki.DEFAULT_HOSTNAME)
    p = _pki(args)
    ca = p.init(hostname, force=args.force)
    _registry(args, must_exist=False).close()
    print("hub %s initialised in %s" % (hostname, args.data))
    print("CA certificate (devices pin this): %s" % ca)


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
            raise UsageError("no pending CA: run `upyhub hub rotate-ca` first")
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
    from upyhub.hub import pki
    sas.check_device_id(args.device_id)
    p = _pki(args)
    p.state()
    reg = _registry(args)
    if reg.get_device(args.device_id):
        raise UsageError("device %r already exists" % args.device_id)
    ptp, stp = args.primary_thumbprint, args.secondary_thumbprint
    cert_pem = None
    if args.auth == "sas" and (args.cert or args.make_cert or ptp or stp):
        raise UsageError("--cert, --make-cert and thumbprints are for --auth selfSigned or certificateAuthority")
    if args.auth != "sas" and (args.primary_key or args.secondary_key):
        raise UsageError("keys are for --auth sas")
    if args.auth == "selfSigned":
        if args.cert:
            cert_pem = files.read_file(args.cert, "device certificate")
        elif args.make_cert:
            cert, key = pki.self_signed_client(args.device_id)
            crt, _ = p.write_pair(cert, key, args.make_cert, args.device_id)
            cert_pem = crt.read_bytes()
            print("certificate and key written: %s (+ .key)" % crt)
        if cert_pem is not None:
            ptp = ptp or pki.thumbprints(pki.der(pki.load_cert(cert_pem)))[1]
        elif not ptp:
            raise UsageError("a selfSigned device needs --cert, --make-cert or --primary-thumbprint")
    row = reg.put_device(args.device_id, auth=args.auth, status="disabled" if args.disabled else "enabled",
                         primary_key=args.primary_key, secondary_key=args.secondary_key,
                         primary_thumb=ptp, secondary_thumb=stp, create_only=True)
    if args.auth == "certificateAuthority" and args.make_cert:
        crt, _ = p.issue_device_cert(args.device_id, args.make_cert)
        print("certificate and key written: %s (+ .key)" % crt)
    print("added %s (%s, %s)" % (row["id"], row["auth"], row["status"]))


def cmd_device_show(args):
    reg = _registry(args)
    row = reg.require_device(args.device_id)
    if args.connection_string:
        if row["auth"] != "sas":
            print("HostName=%s;DeviceId=%s;x509=true" % (_pki(args).hostname, row["id"]))
        else:
            print("HostName=%s;DeviceId=%s;SharedAccessKey=%s" % (_pki(args).hostname, row["id"], row["primary_key"]))
        return
    _print_device(reg, row, args.keys)


def cmd_device_list(args):
    reg = _registry(args)
    rows = reg.list_devices()
    for r in rows:
        print("%-32s %-9s %-21s %s" % (r["id"], r["status"], r["auth"],
                                       "connected" if r["connected"] else "disconnected"))
    if not rows:
        print("no devices (add one with `upyhub hub device add ID`)")


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
        raise UsageError("no device %r in the registry" % args.device_id)
    print("removed %s" % args.device_id)


def cmd_device_regen(args):
    _registry(args).regenerate_key(args.device_id, args.key)
    print("new %s key for %s (see it with `upyhub hub device show %s --keys`)"
          % (args.key, args.device_id, args.device_id))


def cmd_policy_list(args):
    for p in _registry(args).list_policies():
        print("%-18s %s" % (p["name"], ", ".join(p["rights"])))


def cmd_policy_show(args):
    reg = _registry(args)
    if args.connection_string:
        print(reg.connection_string(_pki(args).hostname, args.name))
        return
    p = reg.get_policy(args.name)
    if p is None:
        raise UsageError("no shared access policy %r (see `upyhub hub policy list`)" % args.name)
    doc = {"keyName": p["name"], "rights": p["rights"]}
    if args.keys:
        doc.update(primaryKey=p["primary_key"], secondaryKey=p["secondary_key"])
    print(json.dumps(doc, indent=2))


def cmd_serve(args):
    from upyhub.hub import server
    for name in ("port", "https_port"):
        if not 0 <= getattr(args, name) <= 65535:
            raise UsageError("--%s must be 0..65535" % name.replace("_", "-"))
    _pki(args).state()
    server.serve(args.data, args.bind, args.port, args.https_port, args.verbose)


def cmd_c2d_send(args):
    props = {}
    for kv in args.prop:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise UsageError("--prop takes K=V, not %r" % kv)
        props[k] = v
    sas.check_device_id(args.device_id)
    doc = _call(_service(args).send_c2d, args.device_id, args.body, props)
    print("queued message %s for %s" % (doc["messageId"], args.device_id))


def cmd_method_invoke(args):
    payload = _json_arg(args.payload, "--payload")
    if not 1 <= args.timeout <= 300:
        raise UsageError("--timeout must be 1..300 seconds")
    status, answer = _call(_service(args).invoke_method, args.device_id, args.name, payload, args.timeout)
    print(json.dumps({"status": status, "payload": answer}, indent=2))


def cmd_twin_show(args):
    print(json.dumps(_call(_service(args).get_twin, args.device_id), indent=2))


def cmd_twin_update(args):
    desired = _json_arg(args.desired, "desired")
    if not isinstance(desired, dict):
        raise UsageError("desired must be a JSON object")
    print(json.dumps(_call(_service(args).update_twin, args.device_id, desired), indent=2))


def cmd_monitor(args):
    svc = _service(args)
    since = 0
    if not args.from_start:
        rows = _call(svc.telemetry, args.device, 0)
        while rows:  # skip what is stored: follow from now
            since = rows[-1]["seq"]
            rows = _call(svc.telemetry, args.device, since)
    seen = 0
    print("following telemetry%s (Ctrl-C stops)" % (" of " + args.device if args.device else ""), file=sys.stderr)
    while args.count is None or seen < args.count:
        for row in _call(svc.telemetry, args.device, since, 20):
            since = row["seq"]
            print(json.dumps({"deviceId": row["deviceId"], "enqueuedTime": row["enqueuedTime"],
                              "properties": row["properties"], "body": row["body"]}), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
        else:
            time.sleep(0.05)
