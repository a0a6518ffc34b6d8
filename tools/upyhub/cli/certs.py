"""upyhub certs: inspect root bundles, write the default Azure bundle, stage roots on a board's flash folder."""

from upyhub import certs, files
from upyhub.cli import add_output, print_json
from upyhub.cli.hub import _service, add_service_args  # the hub verbs' way to find the hub's service API


def register(sub):
    p = sub.add_parser("certs", help="root certificates: inspect, default Azure bundle, stage on a board")
    cs = p.add_subparsers(dest="certs_cmd", metavar="COMMAND", parser_class=type(p))
    cs.required = True

    q = cs.add_parser("inspect", help="subjects, SHA-256 fingerprints and not-after dates of a PEM bundle or DER file")
    q.add_argument("file", help="PEM bundle or DER certificate to inspect")
    add_output(q, "the certificates")
    q.set_defaults(func=run_inspect)

    q = cs.add_parser("bundle", help="write the default Azure roots (DigiCert Global Root G2 + Microsoft RSA Root CA 2017)")
    q.add_argument("--out", required=True, help="PEM file to write")
    q.set_defaults(func=run_bundle)

    q = cs.add_parser("push", help="send roots to devices through the hub (direct method updateRootCerts)")
    q.add_argument("--device", action="append", required=True, metavar="ID", help="device id (repeatable)")
    q.add_argument("--timeout", type=int, default=30, help="seconds to wait for each device (1..300)")
    q.add_argument("--data", default=".upyhub", metavar="DIR", help="local hub state folder (default .upyhub)")
    add_service_args(q)
    q.add_argument("file", help="PEM bundle or DER certificate to send (checked with the device's rules first)")
    q.set_defaults(func=run_push)

    q = cs.add_parser("stage", help="stage roots on a board connected over USB/serial (mpremote)")
    q.add_argument("--port", required=True, help="the board's serial port (e.g. /dev/ttyUSB0), as mpremote names it")
    q.add_argument("--certs-dir", default=None, help="certificate folder on the board (default: config.json's, else certs)")
    q.add_argument("file", help="PEM bundle or DER certificate to stage")
    add_output(q, "what was staged")
    q.set_defaults(func=run_stage)

    q = cs.add_parser("stage-local", help="stage roots in a flash folder (simulated board), in the device's own format")
    q.add_argument("--flash", required=True, help="the board's flash folder (created when missing)")
    q.add_argument("--active", action="store_true", help="install as the active set instead (provisioning)")
    q.add_argument("file", help="PEM bundle or DER certificate to write")
    add_output(q, "the manifest written")
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
    if args.output == "json":
        print_json(info)
        return
    print("%s: %d certificate(s), %d bytes, sha256 %s" % (info["file"], len(info["certs"]), info["bytes"], info["sha256"]))
    _print_certs(info)
    print("device check: %s" % info["device"])


def run_bundle(args):
    data = certs.azure_bundle()
    files.write_atomic(args.out, data)
    print("wrote %s: %s" % (args.out, ", ".join(name for name, _ in certs.AZURE_ROOTS)))


def run_stage_local(args):
    data = files.read_file(args.file)
    if args.active:
        m = certs.install_local(args.flash, data)
        what = "installed as active"
    else:
        m = certs.stage_local(args.flash, data)
        what = "staged"
    if args.output == "json":
        return print_json(m)
    print("%s seq %d in %s: %s" % (what, m["seq"], certs.certs_dir(args.flash), ", ".join(c["cn"] for c in m["certs"])))


def run_push(args):
    from upyhub import sas
    from upyhub.errors import UsageError

    if not 1 <= args.timeout <= 300:
        raise UsageError("--timeout must be 1..300 seconds")
    for d in args.device:
        sas.check_device_id(d)
    data = files.read_file(args.file)
    failed = 0
    for device, status, body in certs.push(_service(args), args.device, data, args.timeout):
        body = body if isinstance(body, dict) else {"message": str(body)}
        ok = status == 200 and body.get("status") in ("staged", "active")
        failed += not ok
        print("%s: %d %s: %s" % (device, status, body.get("status", "?"), body.get("message", "")))
    return 1 if failed else 0


def run_stage(args):
    data = files.read_file(args.file)
    r = certs.stage_board(args.port, data, args.certs_dir)
    if args.output == "json":
        return print_json(r)
    print("staged seq %d on %s (/%s): %s" % (r["seq"], args.port, r["dir"], ", ".join(r["cns"])))
