"""upyhub keys derive: per-device keys from a DPS group enrollment key, into a file (0600)."""
from upyhub import keys, provision
from upyhub.errors import UsageError


def register(sub):
    p = sub.add_parser("keys", help="derive per-device keys from a group enrollment key (offline)")
    ks = p.add_subparsers(dest="keys_cmd", metavar="COMMAND")
    ks.required = True
    d = ks.add_parser("derive", help="write registration_id,device_key rows for the given ids")
    d.add_argument("--group-key-file", required=True, help="file holding the base64 group enrollment key")
    d.add_argument("--ids", default=None, help="comma-separated registration ids")
    d.add_argument("--ids-file", default=None, help="one id per line, or a CSV with a device_id column")
    d.add_argument("--out", required=True, help="CSV to write (mode 0600); keys never go to the terminal")
    d.add_argument("--force", action="store_true", help="replace --out if it exists")
    d.set_defaults(func=run)


def run(args):
    group_key = provision.read_secret_file(args.group_key_file, "group key")
    ids = []
    if args.ids:
        ids += [i.strip() for i in args.ids.split(",") if i.strip()]
    if args.ids_file:
        ids += keys.read_ids(args.ids_file)
    if not ids:
        raise UsageError("give registration ids with --ids or --ids-file")
    rows = keys.derive_all(group_key, ids)
    keys.write_keys(args.out, rows, force=args.force)
    print("wrote %d device keys to %s" % (len(rows), args.out))
