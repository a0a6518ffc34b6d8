"""upyhub provision: one board (or a batch) gets its own key, config, roots and firmware; the hub knows it."""
import os
import sys

from upyhub import build, files, provision
from upyhub.cli import add_output, print_json
from upyhub.errors import UpyhubError, UsageError


def register(sub):
    p = sub.add_parser("provision", help="provision a board over mpremote: hub identity, key, config, roots, firmware",
                       description="Secrets are read from files or the environment, never from the command line: "
                                   "the hub connection string from --hub-cs-file or $UPYHUB_HUB_CS, the Wi-Fi "
                                   "password from --wifi-password-file or $UPYHUB_WIFI_PASSWORD.")
    p.add_argument("port", nargs="?", help="the board's serial port (or a sim-board's pty)")
    p.add_argument("--device-id", help="the device id to provision")
    p.add_argument("--batch", metavar="CSV", help="provision many boards: rows of port,device_id[,wifi_ssid]; "
                                                  "rows repeating the previous port prompt to swap boards")
    p.add_argument("--board", required=True, choices=sorted(build.BOARDS),
                   help="the kind of board: checked against what the board reports before anything is written")
    p.add_argument("--data", metavar="DIR",
                   help="a running local hub's data folder: its registryReadWrite policy, CA, address and ports "
                        "(instead of --hub-cs-file, --hub-ca, --gateway, --https-port, --mqtt-port)")
    p.add_argument("--hub-cs-file", help="file with a policy connection string that has RegistryReadWrite")
    p.add_argument("--hub-ca", help="CA certificate(s) to check the hub's HTTPS service with (default: system)")
    p.add_argument("--gateway", help="address to connect to instead of the hub's hostname (TLS still checks it)")
    p.add_argument("--device-gateway", metavar="ADDR",
                   help="the address the board itself connects to (config.json's gateway), when it reaches the hub "
                        "(and DPS) another way than this machine does (default: --gateway)")
    p.add_argument("--ntp", action="append", metavar="SERVER",
                   help="an NTP server the board sets its clock from (repeat for more; default: the firmware's, "
                        "pool.ntp.org)")
    p.add_argument("--https-port", type=int, default=None, help="the hub's service API port (default 443)")
    p.add_argument("--mqtt-port", type=int, default=None, help="the hub's MQTT/TLS port for devices (default 8883)")
    p.add_argument("--roots", help="root certificates the board trusts (default: --hub-ca, else Azure's roots)")
    p.add_argument("--wifi-ssid", help="the Wi-Fi network the board joins (written to config.json)")
    p.add_argument("--wifi-password-file", help="file holding the Wi-Fi password (written to secrets.json)")
    p.add_argument("--group-key-file", help="derive the device key from this DPS group enrollment key")
    p.add_argument("--rotate-key", action="store_true", help="give the device a new key (hub and board together)")
    p.add_argument("--force", action="store_true",
                   help="re-identify a board provisioned as another device (that identity stays on the hub)")
    p.add_argument("--remove-old", action="store_true",
                   help="with a board provisioned as another device: re-identify it and remove the old identity "
                        "from the hub once the new one works (implies --force)")
    p.add_argument("--dps", action="store_true",
                   help="the board registers with the Device Provisioning Service at its first boot instead of "
                        "knowing its hub: it gets the ID scope, its registration id (--device-id) and its own key")
    p.add_argument("--id-scope", help="with --dps: the DPS ID scope (default with --data: the local DPS's)")
    p.add_argument("--dps-endpoint", default=None,
                   help="with --dps: DPS's hostname (default global.azure-devices-provisioning.net)")
    p.add_argument("--dps-port", type=int, default=None, help="with --dps: DPS's MQTT/TLS port (default 8883; "
                                                              "with --data: the local DPS's)")
    p.add_argument("--enroll", action="store_true",
                   help="with --dps and --data: create an individual enrollment on the local DPS for this board "
                        "(instead of --group-key-file)")
    p.add_argument("--no-reset", action="store_true", help="leave the board without resetting it at the end")
    p.add_argument("--timeout", type=int, default=120, help="seconds per board session (default 120)")
    add_output(p, "the summary")
    p.set_defaults(func=run)


def _options(args):
    local = provision.local_hub(args.data) if args.data else {}
    for name in ("hub_ca", "gateway", "https_port", "mqtt_port"):
        if getattr(args, name) is None and name in local:
            setattr(args, name, local[name])
    args.https_port = args.https_port or 443
    args.mqtt_port = args.mqtt_port or 8883
    if args.hub_cs_file:
        cs = provision.read_secret_file(args.hub_cs_file, "hub connection string")
    else:
        cs = os.environ.get("UPYHUB_HUB_CS", "").strip() or local.get("hub_cs")
        if not cs:
            raise UsageError("give the hub connection string with --hub-cs-file or $UPYHUB_HUB_CS "
                             "(or --data DIR for a local hub)")
    pw = None
    if args.wifi_password_file:
        pw = provision.read_secret_file(args.wifi_password_file, "Wi-Fi password")
    elif os.environ.get("UPYHUB_WIFI_PASSWORD"):
        pw = os.environ["UPYHUB_WIFI_PASSWORD"]
    group = provision.read_secret_file(args.group_key_file, "group key") if args.group_key_file else None
    roots_file = args.roots or args.hub_ca
    roots = files.read_file(roots_file, "root certificate file") if roots_file else None
    if args.hub_ca and not os.path.isfile(args.hub_ca):
        raise UsageError("hub CA file not found: %s" % args.hub_ca)
    return provision.Options(args.port, args.device_id, cs, board=args.board, hub_ca=args.hub_ca,
                             gateway=args.gateway, https_port=args.https_port, mqtt_port=args.mqtt_port, roots=roots,
                             wifi_ssid=args.wifi_ssid, wifi_password=pw, group_key=group, rotate=args.rotate_key,
                             reset=not args.no_reset, timeout=args.timeout, force=args.force,
                             remove_old=args.remove_old, device_gateway=args.device_gateway,
                             **({"ntp": args.ntp} if args.ntp else {}))


def _say(msg):
    print("  " + msg, file=sys.stderr)


def _line(s):
    changed = s["changed"]
    wrote = "wrote " + ", ".join(changed[:4]) + (" and %d more" % (len(changed) - 4) if len(changed) > 4 else "")
    return "%s on %s: hub %s, %s, token %s%s" % (
        s["device_id"], s["port"], s["hub"], wrote if changed else "nothing to write", s["check"],
        "; old identity " + s["old"] if s.get("old") else "")


def _dps_options(args):
    """provision.DpsOptions from the command line (and the local hub's DPS with --data)."""
    local = {}
    if args.data:
        from upyhub.hub import dps

        local = dps.endpoint(args.data)
    scope = args.id_scope or local.get("idScope")
    if not scope:
        raise UsageError("--dps needs --id-scope (or --data DIR for the local DPS)")
    if args.enroll and not args.data:
        raise UsageError("--enroll creates an enrollment on the local DPS: give --data DIR (on Azure: az iot dps "
                         "enrollment create)")
    group = provision.read_secret_file(args.group_key_file, "group key") if args.group_key_file else None
    pw = provision.read_secret_file(args.wifi_password_file, "Wi-Fi password") if args.wifi_password_file else \
        os.environ.get("UPYHUB_WIFI_PASSWORD")
    roots_file = args.roots or (local.get("caPath") if args.data else None)
    roots = files.read_file(roots_file, "root certificate file") if roots_file else None
    return provision.DpsOptions(
        args.port, args.device_id, scope, board=args.board,
        endpoint=args.dps_endpoint or local.get("hostname") or "global.azure-devices-provisioning.net",
        dps_port=args.dps_port or local.get("port") or 8883, dps_gateway=local.get("host") if args.data else None,
        hub_gateway=args.gateway or (local.get("host") if args.data else None), roots=roots,
        hub_port=args.mqtt_port or (provision.local_hub(args.data)["mqtt_port"] if args.data else 8883),
        wifi_ssid=args.wifi_ssid, wifi_password=pw, group_key=group, enroll_data=args.data if args.enroll else None,
        reset=not args.no_reset, timeout=args.timeout, force=args.force, device_gateway=args.device_gateway,
        **({"ntp": args.ntp} if args.ntp else {}))


def _dps_line(s):
    a = s["assigned"]
    return "%s on %s: %s enrollment, %s, DPS assigns %s on %s" % (
        s["registration_id"], s["port"], s["enrollment"],
        "wrote %d files" % len(s["changed"]) if s["changed"] else "nothing to write", a["device_id"], a["hub"])


def run(args):
    if args.dps:
        if args.rotate_key or args.remove_old or args.hub_cs_file:
            raise UsageError("--dps: the board's key comes from its enrollment (no --rotate-key, --remove-old or "
                             "hub connection string)")
        if args.batch:
            return _batch(args)
        if not args.port or not args.device_id:
            raise UsageError("give a port and --device-id (the registration id), or --batch CSV")
        summary = provision.provision_dps(_dps_options(args), say=_say)
        print_json(summary) if args.output == "json" else print(_dps_line(summary))
        return 0
    if args.batch:
        if args.port or args.device_id:
            raise UsageError("--batch takes ports and device ids from the CSV, not the command line")
        return _batch(args)
    if not args.port or not args.device_id:
        raise UsageError("give a port and --device-id (or --batch CSV)")
    summary = provision.provision(_options(args), say=_say)
    if args.output == "json":
        print_json(summary)
    else:
        print(_line(summary))


def _batch(args):
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    rows = provision.load_batch(args.batch)
    args.port, args.device_id = rows[0]["port"], rows[0]["device_id"]
    base = _dps_options(args) if args.dps else _options(args)
    results = []
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("provisioning", total=len(rows))
        previous = None
        for row in rows:
            if row["port"] == previous:
                # One port, many boards: the operator swaps them in turn.
                bar.stop()
                console.print("swap in the board for %s on %s, then press Enter" % (row["device_id"], row["port"]))
                if not sys.stdin.readline():
                    raise UsageError("stopped: no answer to the board-swap prompt (stdin closed)")
                bar.start()
            previous = row["port"]
            try:
                if args.dps:
                    opts = provision.copy_options(base, port=row["port"], registration_id=row["device_id"],
                                                  wifi_ssid=row["wifi_ssid"] or base.wifi_ssid)
                    s = provision.provision_dps(opts, say=lambda m: None)
                    results.append((row, "ok", "DPS assigns %s, %d files written"
                                    % (s["assigned"]["device_id"], len(s["changed"]))))
                else:
                    opts = provision.copy_options(base, port=row["port"], device_id=row["device_id"],
                                                  wifi_ssid=row["wifi_ssid"] or base.wifi_ssid)
                    s = provision.provision(opts, say=lambda m: None)
                    results.append((row, "ok", "hub %s, %d files written" % (s["hub"], len(s["changed"]))))
            except UpyhubError as exc:
                results.append((row, "FAILED", str(exc)))
            bar.advance(task)
    table = Table(title="provisioning summary")
    for col in ("port", "device id", "result", "detail"):
        table.add_column(col)
    for row, status, detail in results:
        table.add_row(row["port"], row["device_id"], status, detail)
    Console().print(table)
    failed = sum(1 for r in results if r[1] != "ok")
    print("%d of %d boards provisioned" % (len(rows) - failed, len(rows)))
    return 1 if failed else 0
