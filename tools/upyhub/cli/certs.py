"""upyhub certs: inspect root bundles, write the default Azure bundle, stage roots on a board's flash folder."""
import json

from upyhub import certs


def register(sub):
    p = sub.add_parser("certs", help="root certificates: inspect, default Azure bundle, stage on a board")
    cs = p.add_subparsers(dest="certs_cmd", metavar="COMMAND", parser_class=type(p))
    cs.required = True

    q = cs.add_parser("inspect", help="subjects, SHA-256 fingerprints and not-after dates of a PEM bundle or DER file")
    q.add_argument("file")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=run_inspect)

    q = cs.add_parser("bundle", help="write the default Azure roots (DigiCert Global Root G2 + Microsoft RSA Root CA 2017)")
    q.add_argument("--out", required=True, help="PEM file to write")
    q.set_defaults(func=run_bundle)

    q = cs.add_parser("stage-local", help="stage roots in a flash folder (simulated board), in the device's own format")
    q.add_argument("--flash", required=True, help="the board's flash folder")
    q.add_argument("--active", action="store_true", help="install as the active set instead (provisioning)")
    q.add_argument("file")
    q.set_defaults(func=run_stage_local)


def _print_certs(info):
    for c in info["certs"]:
        flags = ("CA" if c["ca"] else "not a CA") + (", root" if c["root"] else ", issued by another CA")
        print("  %s" % c["subject"])
        print("    sha256    %s" % c["sha256"])
        print("    notAfter  %s (%d days left)" % (c["notAfter"], c["daysLeft"]))
        print("    kind      %s" % flags)


def run_inspect(args):
    info = certs.inspect(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print("%s: %d certificate(s), %d bytes, sha256 %s" % (info["file"], len(info["certs"]), info["bytes"], info["sha256"]))
    _print_certs(info)
    print("device check: %s" % info["device"])


def run_bundle(args):
    data = certs.azure_bundle()
    certs.write_atomic(args.out, data)
    print("wrote %s: %s" % (args.out, ", ".join(name for name, _ in certs.AZURE_ROOTS)))


def run_stage_local(args):
    data = certs.read_file(args.file)
    if args.active:
        m = certs.install_local(args.flash, data)
        what = "installed as active"
    else:
        m = certs.stage_local(args.flash, data)
        what = "staged"
    print("%s seq %d in %s: %s" % (what, m["seq"], certs.certs_dir(args.flash), ", ".join(c["cn"] for c in m["certs"])))
