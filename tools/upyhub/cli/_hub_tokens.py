"""`upyhub hub token-service ...`: the token service (its own process) and its CSV custom registry.

  upyhub hub token-service serve --registry devices.csv [--policy device] [--port 8445] [--ttl 600]
  upyhub hub token-service device add|enable|disable|remove ID --registry devices.csv
  upyhub hub token-service device list --registry devices.csv
Secrets stay in the CSV (mode 0600); no verb prints one.
"""
import json

from upyhub.cli.hub import _output_arg, _table
from upyhub.errors import UsageError


def register(verb, group):
    ts = group("token-service", "the token service: device tokens from the solution's own registry "
                                "(no hub key on devices)")
    v = verb("serve", cmd_serve, "serve GET /challenge and POST /token over HTTPS (Ctrl-C stops)", ts)
    _registry_arg(v)
    v.add_argument("--policy", default="device",
                   help="shared access policy of the hub in --data that signs the tokens; it must have "
                        "DeviceConnect (default device)")
    v.add_argument("--bind", default="0.0.0.0", help="address to listen on (default all; 127.0.0.1 for local)")
    v.add_argument("--port", type=int, default=8445, help="HTTPS port (default 8445; 0 picks a free one)")
    v.add_argument("--ttl", type=int, default=600, help="seconds a token is valid (default 600; 5..86400)")
    v.add_argument("--nonce-ttl", type=int, default=60,
                   help="seconds a challenge nonce is valid (default 60; 1..600)")
    v.add_argument("--verbose", action="store_true", help="debug logging")

    ds = group("device", "devices of the custom registry (CSV device_id,secret_b64,enabled)", ts)
    v = verb("add", cmd_add, "add a device with a fresh 32-byte secret (the CSV is created if absent)", ds)
    v.add_argument("device_id", help="device id (as in the hub)")
    _registry_arg(v)
    v.add_argument("--disabled", action="store_true", help="add it disabled")
    for name, func, what in (("enable", cmd_enable, "let a device get tokens again"),
                             ("disable", cmd_disable, "refuse a device tokens (its connection ends when its "
                                                      "current token expires)"),
                             ("remove", cmd_remove, "remove a device")):
        v = verb(name, func, what, ds)
        v.add_argument("device_id", help="device id")
        _registry_arg(v)
    v = verb("list", cmd_list, "list devices (never their secrets)", ds)
    _registry_arg(v)
    _output_arg(v, "table")


def _registry_arg(v):
    v.add_argument("--registry", required=True, metavar="CSV",
                   help="the custom registry: CSV device_id,secret_b64,enabled (mode 0600)")


def cmd_serve(args):
    from upyhub.hub import tokenservice
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be 0..65535")
    if not 5 <= args.ttl <= 86400:
        raise UsageError("--ttl must be 5..86400 seconds")
    if not 1 <= args.nonce_ttl <= 600:
        raise UsageError("--nonce-ttl must be 1..600 seconds")
    tokenservice.serve(args.data, args.registry, args.policy, args.bind, args.port, args.ttl, args.nonce_ttl,
                       args.verbose)


def cmd_add(args):
    from upyhub.hub import tokenservice
    tokenservice.add_device(args.registry, args.device_id, enabled=not args.disabled)
    print("added %s to %s (secret in the file, mode 0600)" % (args.device_id, args.registry))


def _set(args, enabled):
    from upyhub.hub import tokenservice
    tokenservice.set_enabled(args.registry, args.device_id, enabled)
    print("%s %s" % (args.device_id, "enabled" if enabled else "disabled"))


def cmd_enable(args):
    _set(args, True)


def cmd_disable(args):
    _set(args, False)


def cmd_remove(args):
    from upyhub.hub import tokenservice
    tokenservice.remove_device(args.registry, args.device_id)
    print("removed %s" % args.device_id)


def cmd_list(args):
    from upyhub.hub import tokenservice
    docs = [{"deviceId": d, "enabled": e} for d, (_, e) in sorted(tokenservice.read_registry(args.registry).items())]
    if args.output == "json":
        print(json.dumps(docs, indent=2))
    else:
        _table(docs, ["deviceId", "enabled"])
