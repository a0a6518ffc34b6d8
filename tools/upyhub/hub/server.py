"""`upyhub hub serve`: the device endpoint (MQTT/TLS) and the service API (HTTPS) in one asyncio loop."""
import asyncio
import json
import logging
import signal
import socket
import ssl
import sys

from aiohttp import web

from upyhub.errors import UsageError
from upyhub.files import write_atomic
from upyhub.hub import broker, engine, pki as pki_mod, registry as reg, service, tls

log = logging.getLogger("upyhub.hub")


def _setup_logging(verbose):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S")
    # amqtt's own logs can show session details; the hub logs what matters itself
    for name in ("amqtt", "transitions", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _exception_handler(loop, context):
    """TLS failures (a TLS 1.1 client, a client that distrusts us) as one line, no traceback."""
    exc = context.get("exception")
    if isinstance(exc, (ssl.SSLError, ConnectionError, asyncio.TimeoutError)):
        peer = context.get("transport") and context["transport"].get_extra_info("peername")
        log.warning("TLS/connection failure from %s: %s", peer, getattr(exc, "reason", None) or type(exc).__name__)
        return
    loop.default_exception_handler(context)


def _listen(bind, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
    except OSError as e:
        sock.close()
        raise UsageError("cannot listen on %s:%d: %s" % (bind, port, e.strerror)) from None
    sock.listen(100)
    return sock


async def run(data_dir, bind="0.0.0.0", port=8883, https_port=8443, ready=None):
    pki = pki_mod.PKI(data_dir)
    hostname = pki.hostname
    registry = reg.Registry(data_dir)
    registry.reset_connections()
    hub = engine.Hub(registry, hostname)
    ctx = tls.ServerTLS(pki)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_exception_handler)

    # both ports are bound here, so a busy port is a clear error and port 0 is known
    mqtt_sock = _listen(bind, port)
    mqtt_port = mqtt_sock.getsockname()[1]
    try:
        https_sock = _listen(bind, https_port)
    except UsageError:
        mqtt_sock.close()
        raise
    cert, key = pki.server_paths()  # amqtt checks they exist; the context itself comes from ServerTLS
    config = {"listeners": {"default": {"type": "tcp", "bind": "%s:%d" % (bind, mqtt_port), "ssl": True,
                                        "certfile": str(cert), "keyfile": str(key)}},
              "plugins": {}}
    mqtt = broker.HubBroker(config, hub, ctx, mqtt_sock)
    try:
        await mqtt.start()
    except Exception as e:
        mqtt_sock.close()
        https_sock.close()
        raise UsageError("cannot start the MQTT endpoint on %s:%d: %s" % (bind, mqtt_port, e)) from None
    runner = web.AppRunner(service.make_app(hub), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, https_sock, ssl_context=ctx.https_listener)
    await site.start()
    ports = {"mqtt_port": mqtt.port(), "https_port": https_sock.getsockname()[1]}
    # whole or absent: tools poll for this file and read it as soon as it exists
    write_atomic(registry.data_dir / "serve.json", json.dumps(dict(ports, hostname=hostname, host=bind)).encode())

    sweeper = asyncio.ensure_future(hub.sweep())
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("upyhub local IoT hub")
    print("  hostname   %s" % hostname)
    print("  MQTT/TLS   %s:%d   (devices; TLS 1.2+)" % (bind, ports["mqtt_port"]))
    print("  HTTPS API  %s:%d   (service; policy SAS tokens)" % (bind, ports["https_port"]))
    print("  CA         %s   (generation %d; devices pin this)" % (pki.ca_path(), pki.active))
    print("  data       %s   (%d devices)" % (registry.data_dir, registry.count_devices()))
    print("  service connection string: upyhub hub policy show service --connection-string")
    print("Ctrl-C stops the hub.")
    print("mqtt_port=%d https_port=%d" % (ports["mqtt_port"], ports["https_port"]), flush=True)
    if ready:
        ready(ports)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        sweeper.cancel()
        await runner.cleanup()
        await mqtt.shutdown()
        registry.reset_connections()
        (registry.data_dir / "serve.json").unlink(missing_ok=True)
        registry.close()
        log.info("stopped")


def serve(data_dir, bind="0.0.0.0", port=8883, https_port=8443, verbose=False):
    _setup_logging(verbose)
    asyncio.run(run(data_dir, bind, port, https_port))
