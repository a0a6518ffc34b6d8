"""`upyhub hub serve`: the device endpoint (MQTT/TLS), the service API (HTTPS) and the local DPS (MQTT/TLS)
in one asyncio loop."""
import asyncio
import errno
import fcntl
import json
import logging
import os
import resource
import signal
import socket
import ssl

from aiohttp import web

from upyhub.files import write_atomic
from upyhub.hub import HubError, broker, dps, dps_endpoint, engine, logs, pki as pki_mod, service, tls
from upyhub.hub import registry as reg

log = logging.getLogger("upyhub.hub")
STOP_GRACE = 0.5  # seconds the service API gives requests under way when the hub stops


def _exception_handler(loop, context):
    """Anything asyncio reports (TLS failures, a client that vanished, EMFILE on accept) as one line."""
    exc = context.get("exception")
    if isinstance(exc, (OSError, asyncio.TimeoutError, ssl.SSLError)):
        transport = context.get("transport")
        peer = transport.get_extra_info("peername") if transport else None
        log.warning("connection problem%s: %s", " from %s:%s" % peer[:2] if peer else "",
                    getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__)
        return
    log.error("%s: %s", context.get("message", "error"), type(exc).__name__ if exc else "")


def raise_open_files_limit():
    """The soft limit on open files up to the hard limit: every connection is a file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
    return hard


def listen(bind, port):
    """A bound, listening TCP socket (HubError, one line, when the port is busy or the address wrong)."""
    # IPPROTO_TCP: asyncio then sets TCP_NODELAY on every accepted connection (it skips proto-0 sockets)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
    except OSError as e:
        sock.close()
        raise HubError("cannot listen on %s:%d: %s" % (bind, port, e.strerror)) from None
    sock.listen(1024)
    return sock


class ServeLock:
    """DATA/serve.lock, locked (flock) while a hub serves that folder: one hub per data folder."""

    def __init__(self, data_dir):
        self.path = data_dir / "serve.lock"
        self.fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise HubError("a hub is already serving %s (%s): stop it first (`upyhub hub stop --data %s`)"
                           % (self.path.parent, running_summary(self.path.parent), self.path.parent)) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def running_pid(data_dir):
    """The pid of the hub serving data_dir, or None (the lock, not a pid file, says whether one runs)."""
    path = data_dir / "serve.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def running_summary(data_dir):
    pid = running_pid(data_dir)
    try:
        info = json.loads((data_dir / "serve.json").read_text())
        ports = "MQTT port %s, HTTPS port %s, DPS port %s" % (info["mqtt_port"], info["https_port"],
                                                              info.get("dps_port", "-"))
    except (OSError, ValueError, KeyError, TypeError):
        ports = "starting"
    return "pid %s, %s" % (pid if pid and pid > 0 else "?", ports)


async def run(data_dir, bind="0.0.0.0", port=8883, https_port=8443, ready=None,
              pending_per_address=broker.PENDING_PER_ADDRESS, dps_port=dps.DEFAULT_PORT, dps_bind=None,
              handshake_timeout=broker.HANDSHAKE_TIMEOUT):
    """Serve data_dir until SIGINT/SIGTERM. handshake_timeout: seconds from accept to a finished TLS
    handshake on the device listeners (MQTT and DPS), more than 0 and at most broker.MAX_HANDSHAKE_TIMEOUT."""
    handshake_timeout = broker.check_handshake_timeout(handshake_timeout)
    pki = pki_mod.PKI(data_dir)
    hostname = pki.hostname
    registry = reg.Registry(data_dir)
    lock = ServeLock(registry.data_dir)
    try:
        lock.acquire()
        for gen in pki.ensure_server_names():  # a data folder from before the DPS: add its hostname
            log.info("server certificate %d reissued by CA %d for %s", gen, gen, ", ".join(pki.server_names()))
        addresses = {"mqtt": (bind, port), "https": (bind, https_port), "dps": (dps_bind or bind, dps_port)}
        await _serve(pki, hostname, registry, addresses, ready, pending_per_address, handshake_timeout)
    finally:
        lock.release()
        registry.close()


def _listen_all(addresses):
    """Bind every port here, so a busy port is a clear error and port 0 is known before anything starts."""
    socks = {}
    try:
        for name, (addr, port) in addresses.items():
            socks[name] = listen(addr, port)
    except HubError:
        for s in socks.values():
            s.close()
        raise
    return socks


async def _start_broker(cls, engine_, ctx, sock, pending_per_address, handshake_timeout, what):
    addr, port = sock.getsockname()[:2]
    config = {"listeners": {"default": {"type": "tcp", "bind": "%s:%d" % (addr, port), "ssl": True,
                                        "certfile": str(ctx.pki.server_paths()[0]),
                                        "keyfile": str(ctx.pki.server_paths()[1])}},
              "plugins": {}}  # amqtt checks the files exist; the context itself comes from ServerTLS
    mqtt = cls(config, engine_, ctx, sock, pending_per_address, handshake_timeout)
    try:
        await mqtt.start()
    except Exception as e:
        raise HubError("cannot start the %s on %s:%d: %s" % (what, addr, port, e)) from None
    return mqtt


async def _serve(pki, hostname, registry, addresses, ready, pending_per_address, handshake_timeout):
    registry.reset_connections()
    hub = engine.Hub(registry, hostname)
    dps_engine = dps_endpoint.DpsEngine(registry, hostname)
    id_scope = dps_engine.store.id_scope()
    ctx = tls.ServerTLS(pki)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_exception_handler)
    files_limit = raise_open_files_limit()

    socks = _listen_all(addresses)
    brokers = []
    try:
        brokers.append(await _start_broker(broker.HubBroker, hub, ctx, socks["mqtt"], pending_per_address,
                                           handshake_timeout, "MQTT endpoint"))
        brokers.append(await _start_broker(dps_endpoint.DpsBroker, dps_engine, ctx, socks["dps"],
                                           pending_per_address, handshake_timeout, "DPS endpoint"))
    except HubError:
        await asyncio.gather(*(b.shutdown() for b in brokers), return_exceptions=True)
        for s in socks.values():
            s.close()
        raise
    mqtt, dps_mqtt = brokers
    https_sock = socks["https"]
    runner = web.AppRunner(service.make_app(hub), access_log=None, handle_signals=False,
                           shutdown_timeout=STOP_GRACE)
    await runner.setup()
    site = web.SockSite(runner, https_sock, ssl_context=ctx.https_listener, shutdown_timeout=STOP_GRACE)
    await site.start()
    ports = {"mqtt_port": mqtt.port(), "https_port": https_sock.getsockname()[1], "dps_port": dps_mqtt.port()}
    bind, dps_bind = addresses["mqtt"][0], addresses["dps"][0]
    # whole or absent: tools poll for this file and read it as soon as it exists
    write_atomic(registry.data_dir / "serve.json",
                 json.dumps(dict(ports, hostname=hostname, host=bind, pid=os.getpid(), dps_host=dps_bind,
                                 dps_hostname=pki.dps_hostname, id_scope=id_scope,
                                 handshake_timeout=handshake_timeout)).encode())

    sweeper = asyncio.ensure_future(hub.sweep())
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("upyhub local IoT hub")
    print("  hostname   %s" % hostname)
    print("  MQTT/TLS   %s:%d   (devices; TLS 1.2+)" % (bind, ports["mqtt_port"]))
    print("  HTTPS API  %s:%d   (service; policy SAS tokens)" % (bind, ports["https_port"]))
    print("  DPS/MQTT   %s:%d   (device provisioning as %s; ID scope %s)"
          % (dps_bind, ports["dps_port"], pki.dps_hostname, id_scope))
    print("  CA         %s   (generation %d; devices pin this)" % (pki.ca_path(), pki.active))
    print("  data       %s   (%d devices)" % (registry.data_dir, registry.count_devices()))
    print("  limits     %d open files; %d connections per address before login; TLS handshake within %g s"
          % (files_limit, pending_per_address, handshake_timeout))
    print("  service connection string: upyhub hub policy show service --connection-string")
    print("Ctrl-C stops the hub.")
    print("mqtt_port=%d https_port=%d dps_port=%d" % (ports["mqtt_port"], ports["https_port"], ports["dps_port"]),
          flush=True)
    if ready:
        ready(ports)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        hub.stopping.set()  # long-polls answer now
        sweeper.cancel()
        await asyncio.gather(runner.cleanup(), mqtt.shutdown(), dps_mqtt.shutdown(), return_exceptions=True)
        registry.reset_connections()
        (registry.data_dir / "serve.json").unlink(missing_ok=True)
        logs.flush()
        log.info("stopped")


def serve(data_dir, bind="0.0.0.0", port=8883, https_port=8443, verbose=False,
          pending_per_address=broker.PENDING_PER_ADDRESS, dps_port=dps.DEFAULT_PORT, dps_bind=None,
          handshake_timeout=broker.HANDSHAKE_TIMEOUT):
    logs.install(verbose)
    asyncio.run(run(data_dir, bind, port, https_port, pending_per_address=pending_per_address,
                    dps_port=dps_port, dps_bind=dps_bind, handshake_timeout=handshake_timeout))
