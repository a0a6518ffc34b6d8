"""The device endpoint: amqtt 0.12.1's listener, TLS and MQTT protocol handler, with IoT Hub's rules.

amqtt routes PUBLISHes between clients; IoT Hub never does (device traffic goes to the hub, device-bound
traffic comes from the hub), so the session part of amqtt's Broker is replaced here, by subclassing:
- CONNECT is authenticated before any existing session is looked at, so a failed login never disturbs
  the connected device; refusals answer CONNACK 4 or 5 as Azure does (amqtt always says 5).
- A second connection of the same device id drops the first.
- Client PUBLISHes (including `$iothub/...`, which amqtt refuses) go to engine.Hub; a topic the device
  may not use, or QoS 2, closes the connection before any PUBACK (amqtt acks and drops it).
- SUBSCRIBE is checked against the device's own filters, at most 5; anything else closes the connection.
- Keep-alive: the connection is closed after 1.5 x the client's keep-alive without traffic (cap 1767 s).
- Abuse: TCP_NODELAY on every connection; per-address cap on connections not logged in yet; TLS within
  the hub's handshake timeout of accept (HANDSHAKE_TIMEOUT, 5 s, unless `serve --handshake-timeout`) and
  CONNECT within 5 s of the handshake; every packet's size checked from its fixed header before its body
  is read (FramedReader), wildcards in a PUBLISH topic and malformed packets close the connection.
"""
import asyncio
import collections
import logging
import socket
import ssl

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import CONNECTION_ACCEPTED, ConnackPacket
from amqtt.mqtt.packet import CONNECT, PUBLISH
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.suback import SubackPacket
from amqtt.mqtt.unsuback import UnsubackPacket
from amqtt.events import MQTTEvents

from upyhub.errors import UsageError
from upyhub.hub import auth, engine

log = logging.getLogger("upyhub.hub")
HANDSHAKE_TIMEOUT = 5  # seconds from TCP accept to a finished TLS handshake (default; `serve --handshake-timeout`)
MAX_HANDSHAKE_TIMEOUT = 600  # the longest a hub may be told to wait for one
CONNECT_TIMEOUT = 5  # seconds from the handshake to a complete CONNECT
PENDING_PER_ADDRESS = 100  # connections from one address not yet logged in (TLS or CONNECT under way)
KEEPALIVE_CAP = 1767
MAX_MESSAGE = 256 * 1024  # IoT Hub's device-to-cloud limit (the PUBLISH payload)
MAX_CONNECT = 64 * 1024  # a CONNECT: client id, username, SAS token, an optional will
MAX_CONTROL = 16 * 1024  # SUBSCRIBE, UNSUBSCRIBE, acks, pings


def check_handshake_timeout(seconds, name="the handshake timeout"):
    """seconds (a float) if it is a handshake deadline a hub may use, more than 0 and at most
    MAX_HANDSHAKE_TIMEOUT; UsageError (naming `name`) if not."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not 0 < seconds <= MAX_HANDSHAKE_TIMEOUT:  # NaN fails the comparison too
        raise UsageError("%s must be more than 0 and at most %d (seconds), not %r"
                         % (name, MAX_HANDSHAKE_TIMEOUT, seconds))
    return float(seconds)


class Gate:
    """Connections per remote address that have not logged in yet; a cap keeps one address from holding many."""

    def __init__(self, cap=PENDING_PER_ADDRESS):
        self.cap = cap
        self.pending = collections.Counter()

    def enter(self, addr):
        if self.pending[addr] >= self.cap:
            return None
        self.pending[addr] += 1
        return _Ticket(self, addr)


class _Ticket:
    def __init__(self, gate, addr):
        self.gate, self.addr, self.held = gate, addr, True

    def release(self):
        if self.held:
            self.held = False
            self.gate.pending[self.addr] -= 1
            if self.gate.pending[self.addr] <= 0:
                del self.gate.pending[self.addr]


class Violation(Exception):
    """A packet the hub will not read: the connection is closed (reason logged)."""


class FramedReader(ReaderAdapter):
    """The device's byte stream cut into whole MQTT packets, each checked before its body is read.

    amqtt parses packets field by field straight off the socket; this sits in between and reads the fixed
    header first: a packet larger than its type allows, a PUBLISH whose payload is over 256 KB, whose topic
    holds a wildcard or is not UTF-8, or QoS 3, is refused before its body is read, and the connection ends
    (amqtt sees the end of the stream). end_packet(), called after amqtt parsed each packet, ends the
    connection too when amqtt left bytes of the packet unread (malformed), so a packet's body is never
    parsed as further packets.
    """

    def __init__(self, reader, ticket=None, max_message=MAX_MESSAGE):
        self._reader = reader
        self.ticket = ticket
        self.max_message = max_message
        self._buf = b""
        self._pos = 0
        self.refused = None  # reason, once the stream was cut
        self.label = None  # who is on the other end, for the log

    async def read(self, n=-1):
        if self.refused:
            return b""
        if self._pos >= len(self._buf):
            try:
                self._buf, self._pos = await self._next_packet(), 0
            except Violation as v:
                self._refuse(str(v))
                return b""
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                return b""
        if n < 0 or self._pos + n > len(self._buf):
            if n > 0:  # amqtt wants more than this packet holds: malformed
                self._refuse("malformed packet (fields run past its length)")
                return b""
            n = len(self._buf) - self._pos
        data = self._buf[self._pos:self._pos + n]
        self._pos += n
        return data

    def end_packet(self):
        if not self.refused and self._pos < len(self._buf):
            self._refuse("malformed packet (%d bytes past its fields)" % (len(self._buf) - self._pos))

    def _refuse(self, reason):
        self.refused = reason
        self._buf, self._pos = b"", 0
        log.warning("closing %s: %s", self.label or "a connection", reason)

    async def _next_packet(self):
        head = await self._reader.readexactly(1)
        length, mult, raw = 0, 1, bytearray()
        for _ in range(4):
            b = (await self._reader.readexactly(1))[0]
            raw.append(b)
            length += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        else:
            raise Violation("malformed remaining length")
        ptype, flags = head[0] >> 4, head[0] & 0x0F
        header = head + bytes(raw)
        if ptype != PUBLISH:
            limit = MAX_CONNECT if ptype == CONNECT else MAX_CONTROL
            if length > limit:
                raise Violation("packet type %d of %d bytes (limit %d)" % (ptype, length, limit))
            return header + (await self._reader.readexactly(length) if length else b"")
        qos = (flags >> 1) & 3
        if qos == 3:
            raise Violation("PUBLISH with QoS 3")
        if length < 2:
            raise Violation("malformed PUBLISH")
        tlen_raw = await self._reader.readexactly(2)
        tlen = int.from_bytes(tlen_raw, "big")
        fixed = 2 + tlen + (2 if qos else 0)
        if fixed > length:
            raise Violation("malformed PUBLISH (topic longer than the packet)")
        payload = length - fixed
        if payload > self.max_message:  # before reading the payload: a huge packet costs nothing
            raise Violation("message of %d bytes (limit %d KB)" % (payload, self.max_message // 1024))
        topic = await self._reader.readexactly(tlen)
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            raise Violation("PUBLISH topic is not UTF-8") from None
        if not text or "#" in text or "+" in text or "\0" in text:
            raise Violation("PUBLISH topic is empty or holds a wildcard or NUL")
        return header + tlen_raw + topic + await self._reader.readexactly(length - 2 - tlen)

    def feed_eof(self):
        self._reader.feed_eof()


class _PacketHook:
    """amqtt's plugin manager as a handler sees it, telling the FramedReader when a packet was parsed."""

    def __init__(self, inner, reader):
        self._inner, self._reader = inner, reader

    async def fire_event(self, event, *args, **kwargs):
        if event == MQTTEvents.PACKET_RECEIVED:
            self._reader.end_packet()
        return await self._inner.fire_event(event, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class HubHandler(BrokerProtocolHandler):
    """amqtt's broker-side protocol handler with IoT Hub's per-device rules."""

    hub = None
    device_id = None
    expires = None  # SAS expiry (Unix s): Azure drops the connection then
    ticket = None  # the address's count of connections not logged in (broker.Gate), while it holds it
    credentials = (None, None, ())  # the CONNECT's password, client certificate (DER) and chain

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.subscriptions = {}  # filter -> granted QoS
        self.closing = False

    def subscription_qos(self, topic):
        granted = [q for f, q in self.subscriptions.items() if engine.topic_matches(topic, f)]
        return max(granted) if granted else None

    def close(self, reason):
        """Drop the connection (Azure's answer to a forbidden action: no error packet, just close)."""
        if not self.closing:
            self.closing = True
            log.warning("closing %s: %s", self.device_id, reason)
            asyncio.ensure_future(self.handle_connection_closed())

    async def handle_publish(self, packet):
        if self.closing:
            return
        topic = packet.topic_name or ""
        if packet.qos == 2:
            return self.close("QoS 2 publish")
        if len(packet.data or b"") > MAX_MESSAGE:
            return self.close("message larger than 256 KB")
        if not await self.hub.on_publish(self, topic, packet.data or b""):
            return self.close("publish to a topic it may not use")
        if packet.qos == 1:
            await self._send_packet(PubackPacket.build(packet.packet_id))

    async def handle_subscribe(self, packet):
        if self.closing:
            return
        topics = packet.payload.topics
        for flt, _qos in topics:
            if not self.hub.may_subscribe(self.device_id, flt):
                return self.close("subscribe to a topic filter it may not use")
        if len(set(self.subscriptions) | {f for f, _ in topics}) > engine.MAX_SUBSCRIPTIONS:
            return self.close("more than %d subscriptions" % engine.MAX_SUBSCRIPTIONS)
        codes = []
        for flt, qos in topics:
            self.subscriptions[flt] = min(qos, 1)  # QoS 2 subscriptions are granted QoS 1
            codes.append(min(qos, 1))
        await self._send_packet(SubackPacket.build(packet.variable_header.packet_id, codes))
        await self.hub.on_subscribed(self)

    async def handle_unsubscribe(self, packet):
        for flt in packet.payload.topics:
            self.subscriptions.pop(flt, None)
        await self._send_packet(UnsubackPacket.build(packet.variable_header.packet_id))

    def handle_read_timeout(self):
        self.close("keep-alive expired")


class _Pending(asyncio.Protocol):
    """A TCP connection just accepted: reading paused until the hub starts TLS on it (nothing is read before)."""

    def __init__(self, broker, listener_name):
        self.broker, self.listener_name = broker, listener_name

    def connection_made(self, transport):
        transport.pause_reading()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay on small acks
        self.broker.accepted(transport, self.listener_name)

    def connection_lost(self, exc):
        pass  # before TLS started: the task starting it sees the closed transport


class HubBroker(Broker):
    """amqtt's Broker on a socket bound by the caller (port 0 without a race), with the hub's TLS and limits.

    Each accepted connection gets a per-address ticket (Gate) until it has logged in; TLS must finish within
    handshake_timeout seconds of accept (HANDSHAKE_TIMEOUT unless the hub says otherwise) and the CONNECT
    arrive within CONNECT_TIMEOUT; then amqtt's session machinery runs with IoT Hub's rules (below).
    """

    label = ""  # log lines' prefix
    max_message = MAX_MESSAGE  # largest PUBLISH payload read
    hold_ticket = False  # True: a logged-in connection still counts against its address (ticket.release ends it)
    one_per_id = True  # a second connection of a client id drops the first (IoT Hub); False: they coexist

    def __init__(self, config, hub, tls, sock, pending_per_address=PENDING_PER_ADDRESS,
                 handshake_timeout=HANDSHAKE_TIMEOUT):
        self.hub, self.tls, self.sock = hub, tls, sock
        self.handshake_timeout = check_handshake_timeout(handshake_timeout)
        self.gate = Gate(pending_per_address)
        self._conn_tasks = set()
        super().__init__(config)

    def _create_ssl_context(self, listener):
        return self.tls.mqtt_listener

    async def _create_server_instance(self, listener_name, listener_type, address, port, ssl_context):
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _Pending(self, listener_name), sock=self.sock)

    def port(self, listener="default"):
        return self._servers[listener].instance.sockets[0].getsockname()[1]

    def accepted(self, transport, listener_name):
        peer = transport.get_extra_info("peername") or ("?", 0)
        ticket = self.gate.enter(peer[0])
        if ticket is None:
            log.warning("refused a connection from %s: %d connections from there are not logged in yet",
                        peer[0], self.gate.cap)
            transport.abort()
            return
        task = asyncio.ensure_future(self._serve(transport, ticket, listener_name, peer))
        self._conn_tasks.add(task)
        task.add_done_callback(self._conn_tasks.discard)

    async def _serve(self, transport, ticket, listener_name, peer):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_CONTROL, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            try:
                tls = await loop.start_tls(transport, protocol, self.tls.mqtt_listener, server_side=True,
                                           ssl_handshake_timeout=self.handshake_timeout)
            except Exception as exc:  # timeout, TLS alert, reset: one (rate-limited) line, never a traceback
                log.warning("TLS handshake with %s:%s failed: %s", peer[0], peer[1],
                            _why(exc, self.handshake_timeout))
                transport.abort()
                return
            protocol.connection_made(tls)
            writer = asyncio.StreamWriter(tls, protocol, reader, loop)
            framed = FramedReader(reader, ticket, self.max_message)
            framed.label = "%s:%s" % peer[:2]
            try:
                await self._client_connected(listener_name, framed, StreamWriterAdapter(writer))
            except Exception as exc:  # one broken connection must not take the broker down
                log.warning("connection from %s:%s ended: %s", peer[0], peer[1], type(exc).__name__)
            if not tls.is_closing():
                tls.abort()
        finally:
            ticket.release()

    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):
        try:
            return await asyncio.wait_for(
                HubHandler.init_from_connect(reader, writer, _PacketHook(self.plugins_manager, reader)),
                CONNECT_TIMEOUT)
        except (AMQTTError, MQTTError, NoDataError, asyncio.TimeoutError, ConnectionError, ValueError,
                UnicodeDecodeError) as exc:
            why = reader.refused or ("no CONNECT within %d s" % CONNECT_TIMEOUT
                                     if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__)
            log.info("refused %s:%s: not an MQTT 3.1.1 CONNECT (%s)", remote_address, remote_port, why)
            await writer.close()
            raise AMQTTError("bad CONNECT") from None

    async def _handle_client_session(self, reader, writer, session, handler, server, listener_name):
        try:
            await self._device_session(reader, writer, session, handler)
        except Exception as exc:  # one broken connection must not take the broker down
            log.warning("connection of %r ended: %s", session.client_id, type(exc).__name__)
            await writer.close()

    def login(self, session, der, chain):
        """Authenticate a CONNECT (IoT Hub's rules): (how, SAS expiry or None), or raises auth.Refused."""
        return auth.device(self.hub.registry, self.hub.hostname, session.client_id, session.username,
                           session.password, der, chain=chain)

    async def _device_session(self, reader, writer, session, handler):
        cid = session.client_id
        peer = "%s:%s" % (session.remote_address, session.remote_port)
        ssl_object = session.ssl_object
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        chain = ssl_object.peer_chain() if der and hasattr(ssl_object, "peer_chain") else []
        try:
            how, handler.expires = self.login(session, der, chain)
        except auth.Refused as r:
            log.warning("%srefused %r from %s: %s (CONNACK %d)", self.label, cid, peer, r.reason, r.code)
            try:
                await ConnackPacket.build(0, r.code).to_stream(writer)
                await writer.close()
            except ConnectionError:
                pass  # the client did not wait for the answer
            return
        finally:
            if reader.ticket and not self.hold_ticket:
                reader.ticket.release()  # logged in (or refused): no longer counts against its address
        handler.ticket = reader.ticket
        handler.credentials = (session.password, der, chain)
        reader.label = repr(cid)
        key = cid if self.one_per_id else (cid, id(handler))
        old = self._sessions.get(key)
        if old is not None:
            log.info("%s%s connected again from %s: dropping its previous connection", self.label, cid, peer)
            await old[1].handle_connection_closed()
            await old[1].stop()
        if session.keep_alive:
            session.keep_alive = min(session.keep_alive * 3 // 2, KEEPALIVE_CAP)
        session.transitions.connect()
        handler.hub, handler.device_id = self.hub, cid
        handler.attach(session, reader, writer)
        self._sessions[key] = (session, handler)
        await handler._send_packet(ConnackPacket.build(0, CONNECTION_ACCEPTED))
        log.info("%sconnected %s from %s (%s)", self.label, cid, peer, how)
        self.hub.connected(handler)
        try:
            await handler.start()
            await handler.wait_disconnect()
        finally:
            await handler.stop()
            if self._sessions.get(key, (None, None))[1] is handler:
                del self._sessions[key]
            self.hub.disconnected(handler)
            log.info("%sdisconnected %s", self.label, cid)

    async def shutdown(self):
        for task in list(self._conn_tasks):
            task.cancel()
        await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        await super().shutdown()


def _why(exc, handshake_timeout):
    if isinstance(exc, (asyncio.TimeoutError, ConnectionAbortedError)):
        return "no TLS handshake within %g s" % handshake_timeout
    return getattr(exc, "reason", None) or str(exc) or type(exc).__name__
