"""upyhub token: mint device or policy SAS tokens, verify one, derive DPS device keys.

Keys come from --key, --key-file, the UPYHUB_KEY environment variable or a connection
string (--connection-string, or '-' to read it from stdin), so they need not sit in
shell history. Only the token (or the derived key) is printed, on stdout.
"""
import os
import sys
import time

from upyhub import sas
from upyhub.errors import UsageError


def register(sub):
    p = sub.add_parser(
        "token",
        help="mint a SAS token (device or policy), verify one, or derive a DPS device key",
        description="Mint an IoT Hub SAS token from a key or a connection string, verify a token, "
        "or derive a per-device key from a DPS group-enrollment key (--derive).",
    )
    src = p.add_argument_group("credentials")
    src.add_argument("--connection-string", "-c", metavar="CS",
                     help="device or policy connection string ('-' reads it from stdin)")
    src.add_argument("--key", "-k", help="base64 key ('-' reads it from stdin; or set UPYHUB_KEY)")
    src.add_argument("--key-file", metavar="PATH", help="file holding the base64 key")
    what = p.add_argument_group("what to sign")
    what.add_argument("--hub", metavar="HOSTNAME", help="hub hostname, e.g. myhub.azure-devices.net")
    what.add_argument("--device", "-d", metavar="ID", help="device id: token scoped to HOSTNAME/devices/ID")
    what.add_argument("--policy", metavar="NAME", help="shared access policy name (adds skn=NAME)")
    what.add_argument("--resource", metavar="URI", help="explicit resource URI (default from --hub/--device)")
    when = p.add_argument_group("validity")
    when.add_argument("--ttl", type=_int, default=None, help="seconds from now (default 3600)")
    when.add_argument("--expiry", type=_int, default=None, help="absolute expiry, Unix seconds")
    other = p.add_argument_group("other modes")
    other.add_argument("--derive", action="store_true",
                       help="derive a device key from a group-enrollment key (--key) and --registration-id")
    other.add_argument("--registration-id", metavar="ID", help="DPS registration id for --derive")
    other.add_argument("--verify", metavar="TOKEN",
                       help="check TOKEN's signature with the key and that it is not expired ('-' reads stdin)")
    p.set_defaults(func=run)


def _int(text):
    try:
        return int(text, 10)
    except ValueError:
        raise UsageError("not an integer: %r" % text) from None


def _stdin_line(what):
    line = sys.stdin.readline().strip()
    if not line:
        raise UsageError("%s expected on stdin" % what)
    return line


def _read_key(args):
    given = [x for x in (args.key, args.key_file) if x is not None]
    if len(given) > 1:
        raise UsageError("give the key once: --key or --key-file")
    if args.key == "-":
        return _stdin_line("key")
    if args.key is not None:
        return args.key
    if args.key_file is not None:
        try:
            with open(args.key_file, encoding="ascii") as f:
                return f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError("cannot read key file %s: %s" % (args.key_file, getattr(exc, "strerror", None) or "not ASCII")) from None
    return os.environ.get("UPYHUB_KEY")


def _resolve(args):
    """(resource_uri, key, policy) from the flags and/or a connection string."""
    key = _read_key(args)
    hub, device, policy = args.hub, args.device, args.policy
    if args.connection_string is not None:
        if key is not None:
            raise UsageError("give either a connection string or a key, not both")
        cs = args.connection_string
        if cs == "-":
            cs = _stdin_line("connection string")
        fields = sas.parse_connection_string(cs)
        if "SharedAccessKey" not in fields:
            raise UsageError("connection string has no SharedAccessKey")
        key = fields["SharedAccessKey"]
        hub = hub or fields["HostName"]
        device = device or fields.get("DeviceId")
        policy = policy or fields.get("SharedAccessKeyName")
        if fields.get("ModuleId"):
            raise UsageError("module connection strings are not supported")
    if key is None:
        raise UsageError("no key: use --key, --key-file, UPYHUB_KEY or --connection-string")
    sas.decode_key(key)
    if args.resource:
        return args.resource, key, policy
    if not hub:
        raise UsageError("no hub: use --hub or a connection string with HostName")
    sas.check_hostname(hub)
    if device is not None:
        sas.check_device_id(device)
        return "%s/devices/%s" % (hub, device), key, policy
    if not policy:
        raise UsageError("a hub-wide token needs --policy (or --device for a device token)")
    return hub, key, policy


def _expiry(args, now):
    if args.ttl is not None and args.expiry is not None:
        raise UsageError("give --ttl or --expiry, not both")
    if args.expiry is not None:
        if args.expiry <= now:
            raise UsageError("expiry %d is in the past" % args.expiry)
        if args.expiry > 0xFFFFFFFF:
            raise UsageError("expiry is out of range")
        return args.expiry
    ttl = 3600 if args.ttl is None else args.ttl
    if ttl <= 0:
        raise UsageError("--ttl must be a positive number of seconds")
    return now + ttl


def run(args):
    if args.derive:
        if not args.registration_id:
            raise UsageError("--derive needs --registration-id")
        key = _read_key(args)
        if key is None:
            raise UsageError("--derive needs the group key: --key, --key-file or UPYHUB_KEY")
        print(sas.derive_device_key(key, args.registration_id))
        return 0
    if args.registration_id:
        raise UsageError("--registration-id is only for --derive")
    if args.verify is not None:
        return _verify(args)
    resource, key, policy = _resolve(args)
    print(sas.mint(resource, key, _expiry(args, int(time.time())), policy=policy))
    return 0


def _verify(args):
    text = _stdin_line("token") if args.verify == "-" else args.verify
    tok = sas.parse(text)
    key = _read_key(args)
    if args.connection_string is not None:
        if key is not None:
            raise UsageError("give either a connection string or a key, not both")
        cs = _stdin_line("connection string") if args.connection_string == "-" else args.connection_string
        key = sas.parse_connection_string(cs).get("SharedAccessKey")
    if key is None:
        raise UsageError("no key to verify with: --key, --key-file, UPYHUB_KEY or --connection-string")
    if not tok.valid_signature(sas.decode_key(key)):
        print("invalid: signature does not match the key", file=sys.stderr)
        return 1
    if tok.expired():
        print("invalid: expired at %d" % tok.se, file=sys.stderr)
        return 1
    scope = "policy " + tok.skn if tok.skn else "device key"
    print("valid: sr=%s se=%d (%s, %d s left)" % (tok.sr, tok.se, scope, tok.se - int(time.time())))
    return 0
