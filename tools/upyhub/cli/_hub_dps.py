"""`upyhub hub dps ...`: the local Device Provisioning Service's ID scope, enrollments and registrations.

Like `az iot dps ...`: `dps show`, `dps enrollment create|show|list|enable|disable|remove`,
`dps enrollment-group create|show|list|enable|disable|remove`, `dps registration show|list|remove`.
Keys are shown only with --keys; a group's primary key can be written to a file (0600) with --key-out,
for `upyhub keys derive --group-key-file` and factory provisioning.
"""
import json

from upyhub import files
from upyhub.cli.hub import _output_arg, _pki, _registry, _show, _table, thumbprint_of
from upyhub.errors import UsageError

KIND = {"enrollment": "individual", "enrollment-group": "group"}


def register(verb, group):
    ds = group("dps", "the local Device Provisioning Service: ID scope, enrollments, registrations")
    v = verb("show", cmd_show, "the ID scope and where devices register (hostname, address, port)", ds)
    _output_arg(v, "json")

    es = group("enrollment", "individual enrollments (one device each; its registration id)", ds)
    v = verb("create", cmd_create, "create an individual enrollment", es)
    v.add_argument("registration_id", help="registration id (1..128 lowercase letters, digits, '-')")
    _attestation_args(v)
    v.add_argument("--cert", metavar="PEM", help="x509: the device certificate (its SHA-256 thumbprint is enrolled)")
    v.add_argument("--primary-thumbprint", metavar="HEX", help="x509: SHA-1 (40 hex) or SHA-256 (64 hex) thumbprint")
    v.add_argument("--secondary-thumbprint", metavar="HEX", help="x509: a second accepted thumbprint")
    v.add_argument("--make-cert", metavar="DIR",
                   help="x509: create a self-signed device certificate (CN = registration id) and key in DIR")
    v.add_argument("--device-id", help="the IoT Hub device id it gets (default: the registration id)")

    gs = group("enrollment-group", "enrollment groups (many devices: derived keys or certificates from one CA)", ds)
    v = verb("create", cmd_create, "create an enrollment group", gs)
    v.add_argument("group_id", help="enrollment group id (letters, digits, - . _ :)")
    _attestation_args(v)
    v.add_argument("--key-out", metavar="FILE",
                   help="symmetricKey: also write the primary group key to FILE (mode 0600), for "
                        "`upyhub keys derive --group-key-file` (the key never belongs on a device)")
    v.add_argument("--ca-cert", metavar="PEM",
                   help="x509: the CA (root or intermediate) that signs the group's device certificates; "
                        "also registered with the hub")
    v.add_argument("--secondary-ca-cert", metavar="PEM", help="x509: a second signing CA")

    for actions, id_name, what in ((es, "registration_id", "registration id"), (gs, "group_id", "group id")):
        v = verb("show", cmd_enrollment_show, "show an enrollment (keys only when asked)", actions)
        v.add_argument(id_name, help=what)
        v.add_argument("--keys", action="store_true", help="include the symmetric keys")
        _output_arg(v, "json")
        v = verb("list", cmd_enrollment_list, "list enrollments", actions)
        _output_arg(v, "table")
        for name, func in (("enable", cmd_enable), ("disable", cmd_disable), ("remove", cmd_remove)):
            verb(name, func, name + " an enrollment (its devices stay in the hub)" if name == "remove"
                 else name + " an enrollment", actions).add_argument(id_name, help=what)

    rs = group("registration", "registration records (what DPS assigned to each device)", ds)
    v = verb("show", cmd_registration_show, "show a registration", rs)
    v.add_argument("registration_id", help="registration id")
    _output_arg(v, "json")
    v = verb("list", cmd_registration_list, "list registrations", rs)
    _output_arg(v, "table")
    verb("remove", cmd_registration_remove, "forget a registration (the hub's device stays)",
         rs).add_argument("registration_id", help="registration id")


def _attestation_args(v):
    v.add_argument("--attestation", choices=("symmetricKey", "x509"), default="symmetricKey",
                   help="how devices prove who they are (default symmetricKey)")
    v.add_argument("--primary-key", help="symmetricKey: base64 key, 16..64 bytes (default: 32 random bytes)")
    v.add_argument("--secondary-key", help="symmetricKey: base64 key (default: 32 random bytes)")
    v.add_argument("--disabled", action="store_true", help="create it disabled")


def _kind(args):
    return KIND[args.dps_verb]


def _enrollment_id(args):
    return args.registration_id if _kind(args) == "individual" else args.group_id


class _Store:
    """The DPS store of --data for one verb (registry closed after)."""

    def __init__(self, args):
        from upyhub.hub import dps
        self.registry = _registry(args)
        self.store = dps.Store(self.registry)

    def __enter__(self):
        return self.store

    def __exit__(self, *exc):
        self.registry.close()


def cmd_show(args):
    from upyhub.hub import dps
    _pki(args).state()
    _registry(args).close()
    _show(dps.endpoint(args.data), args.output, ["idScope", "hostname", "host", "port", "running"])


def cmd_create(args):
    from upyhub.hub import dps, pki
    kind = _kind(args)
    eid = _enrollment_id(args)
    x509 = args.attestation == "x509"
    if x509 and (args.primary_key or args.secondary_key):
        raise UsageError("--primary-key/--secondary-key are for --attestation symmetricKey")
    common = {"attestation": args.attestation, "primary_key": args.primary_key,
              "secondary_key": args.secondary_key, "enabled": not args.disabled}
    _pki(args).state()
    if kind == "individual":
        if not x509 and (args.cert or args.make_cert or args.primary_thumbprint or args.secondary_thumbprint):
            raise UsageError("--cert, --make-cert and thumbprints are for --attestation x509")
        made = thumbprint_of(args, eid) if x509 else None
        doc = dps.create_enrollment(args.data, eid, primary_thumbprint=args.primary_thumbprint or made,
                                    secondary_thumbprint=args.secondary_thumbprint, device_id=args.device_id,
                                    **common)
    else:
        if not x509 and (args.ca_cert or args.secondary_ca_cert):
            raise UsageError("--ca-cert is for --attestation x509")
        if x509 and args.key_out:
            raise UsageError("--key-out is for --attestation symmetricKey")
        if x509 and not args.ca_cert:
            raise UsageError("an x509 enrollment group needs --ca-cert")
        cas = [pki.load_cert(files.read_file(f, "CA certificate")) for f in (args.ca_cert, args.secondary_ca_cert) if f]
        doc = dps.create_enrollment_group(args.data, eid, ca_certs=cas, **common)
        if args.key_out:
            files.write_atomic(args.key_out, (doc["attestation"]["symmetricKey"]["primaryKey"] + "\n").encode(),
                               private=True)
            print("primary group key written to %s (mode 0600)" % args.key_out)
    print("created %s enrollment %s (%s, %s)" % (kind, eid, args.attestation, doc["provisioningStatus"]))


def _enrollment_doc(store, row, keys):
    doc = store.enrollment_json(row, keys=keys)
    if not keys and "symmetricKey" in doc["attestation"]:
        doc["attestation"].pop("symmetricKey")
    return doc


def _columns(kind):
    first = ["registrationId", "deviceId"] if kind == "individual" else ["enrollmentGroupId"]
    return first + ["attestationType", "provisioningStatus", "lastUpdatedDateTimeUtc"]


def _flat(doc):
    return dict(doc, attestationType=doc["attestation"]["type"])


def cmd_enrollment_show(args):
    kind = _kind(args)
    with _Store(args) as store:
        doc = _enrollment_doc(store, store.require_enrollment(kind, _enrollment_id(args)), args.keys)
    _show(_flat(doc) if args.output == "table" else doc, args.output, _columns(kind))


def cmd_enrollment_list(args):
    kind = _kind(args)
    with _Store(args) as store:
        docs = [_enrollment_doc(store, r, False) for r in store.list_enrollments(kind)]
    if args.output == "json":
        print(json.dumps(docs, indent=2))
    elif not docs:
        print("no %s (create one with `upyhub hub dps %s create ID`)"
              % ("enrollments" if kind == "individual" else "enrollment groups", args.dps_verb))
    else:
        _table([_flat(d) for d in docs], _columns(kind))


def _set_status(args, status):
    with _Store(args) as store:
        store.set_enrollment_status(_kind(args), _enrollment_id(args), status)
    print("%s %s" % (_enrollment_id(args), status))


def cmd_enable(args):
    _set_status(args, "enabled")


def cmd_disable(args):
    _set_status(args, "disabled")


def cmd_remove(args):
    with _Store(args) as store:
        store.delete_enrollment(_kind(args), _enrollment_id(args))
    print("removed %s" % _enrollment_id(args))


REG_COLUMNS = ["registrationId", "deviceId", "status", "substatus", "assignedHub", "lastUpdatedDateTimeUtc"]


def cmd_registration_show(args):
    with _Store(args) as store:
        doc = store.registration_json(store.require_registration(args.registration_id), enrollment_fields=True)
    _show(doc, args.output, REG_COLUMNS)


def cmd_registration_list(args):
    with _Store(args) as store:
        docs = [store.registration_json(r, enrollment_fields=True) for r in store.list_registrations()]
    if args.output == "json":
        print(json.dumps(docs, indent=2))
    elif not docs:
        print("no registrations yet (devices register through the DPS endpoint of `upyhub hub serve`)")
    else:
        _table(docs, REG_COLUMNS)


def cmd_registration_remove(args):
    with _Store(args) as store:
        store.delete_registration(args.registration_id)
    print("removed registration %s" % args.registration_id)
