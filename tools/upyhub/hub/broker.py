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
"""
import asyncio
import functools
import logging

from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import CONNECTION_ACCEPTED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.suback import SubackPacket
from amqtt.mqtt.unsuback import UnsubackPacket

from upyhub.hub import auth, engine

log = logging.getLogger("upyhub.hub")
CONNECT_TIMEOUT = 30
KEEPALIVE_CAP = 1767
MAX_MESSAGE = 256 * 1024  # IoT Hub's device-to-cloud limit


class HubHandler(BrokerProtocolHandler):
    """amqtt's broker-side protocol handler with IoT Hub's per-device rules."""

    hub = None
    device_id = None
    expires = None  # SAS expiry (Unix s): Azure drops the connection then

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
            if not engine.may_subscribe(self.device_id, flt):
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


class HubBroker(Broker):
    """amqtt's Broker on a socket bound by the caller (port 0 without a race), with the hub's TLS contexts."""

    def __init__(self, config, hub, tls, sock):
        self.hub, self.tls, self.sock = hub, tls, sock
        super().__init__(config)

    def _create_ssl_context(self, listener):
        return self.tls.mqtt_listener

    async def _create_server_instance(self, listener_name, listener_type, address, port, ssl_context):
        return await asyncio.start_server(functools.partial(self.stream_connected, listener_name=listener_name),
                                          sock=self.sock, ssl=ssl_context)

    def port(self, listener="default"):
        return self._servers[listener].instance.sockets[0].getsockname()[1]

    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):
        try:
            return await asyncio.wait_for(HubHandler.init_from_connect(reader, writer, self.plugins_manager),
                                          CONNECT_TIMEOUT)
        except (AMQTTError, MQTTError, NoDataError, asyncio.TimeoutError, ConnectionError) as exc:
            log.info("refused %s: not an MQTT 3.1.1 CONNECT (%s)", remote_address, type(exc).__name__)
            await writer.close()
            raise AMQTTError("bad CONNECT") from None

    async def _handle_client_session(self, reader, writer, session, handler, server, listener_name):
        try:
            await self._device_session(reader, writer, session, handler)
        except Exception as exc:  # one broken connection must not take the broker down
            log.warning("connection of %s ended: %s", session.client_id, type(exc).__name__)
            await writer.close()

    async def _device_session(self, reader, writer, session, handler):
        cid = session.client_id
        peer = "%s:%s" % (session.remote_address, session.remote_port)
        der = session.ssl_object.getpeercert(binary_form=True) if session.ssl_object else None
        try:
            how, handler.expires = auth.device(self.hub.registry, self.hub.hostname, cid, session.username, session.password, der)
        except auth.Refused as r:
            log.warning("refused %r from %s: %s (CONNACK %d)", cid, peer, r.reason, r.code)
            try:
                await ConnackPacket.build(0, r.code).to_stream(writer)
                await writer.close()
            except ConnectionError:
                pass  # the client did not wait for the answer
            return
        old = self._sessions.get(cid)
        if old is not None:
            log.info("%s connected again from %s: dropping its previous connection", cid, peer)
            await old[1].handle_connection_closed()
            await old[1].stop()
        if session.keep_alive:
            session.keep_alive = min(session.keep_alive * 3 // 2, KEEPALIVE_CAP)
        session.transitions.connect()
        handler.hub, handler.device_id = self.hub, cid
        handler.attach(session, reader, writer)
        self._sessions[cid] = (session, handler)
        await handler._send_packet(ConnackPacket.build(0, CONNECTION_ACCEPTED))
        log.info("connected %s from %s (%s)", cid, peer, how)
        self.hub.connected(handler)
        try:
            await handler.start()
            await handler.wait_disconnect()
        finally:
            await handler.stop()
            if self._sessions.get(cid, (None, None))[1] is handler:
                del self._sessions[cid]
            self.hub.disconnected(handler)
            log.info("disconnected %s", cid)
