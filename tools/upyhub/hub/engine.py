"""What IoT Hub does with device traffic: telemetry, twins, direct methods, cloud-to-device messages.

The MQTT layer (broker.py) calls on_publish/on_subscribed; the service API (service.py) calls
invoke_method/update_twin/send_c2d. Device-bound messages go only to topics the device subscribed,
as on Azure.
"""
import asyncio
import itertools
import json
import logging
import time
import urllib.parse

from upyhub.errors import UsageError
from upyhub.hub import logs
from upyhub.sas import quote

log = logging.getLogger("upyhub.hub")
MAX_SUBSCRIPTIONS = 5


def encode_bag(props):
    return "&".join("%s=%s" % (quote(k), quote(str(v))) for k, v in props.items())


def decode_bag(bag):
    props = {}
    for part in bag.split("&"):
        if part:
            k, _, v = part.partition("=")
            props[urllib.parse.unquote(k)] = urllib.parse.unquote(v)
    return props


def query(topic):
    return decode_bag(topic.partition("?")[2])


def topic_matches(topic, flt):
    t, f = topic.split("/"), flt.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(t) == len(f)


def filter_under(flt, prefixes):
    """A well-formed MQTT topic filter (wildcards whole levels, `#` last) below one of the prefixes."""
    levels = flt.split("/")
    if any(("#" in lv and (lv != "#" or i != len(levels) - 1)) or ("+" in lv and lv != "+")
           for i, lv in enumerate(levels)):
        return False
    return any(flt.startswith(p) and len(flt) > len(p) for p in prefixes)


def may_subscribe(device_id, flt):
    """A device's filters: its own devicebound, twin responses, desired patches, direct methods."""
    return filter_under(flt, ("devices/%s/messages/devicebound/" % device_id, "$iothub/twin/res/",
                              "$iothub/twin/PATCH/properties/desired/", "$iothub/methods/POST/"))


async def deliver(handler, topic, data):
    """Publish to a connection if one of its subscriptions matches; True when delivered (QoS 1: acked)."""
    qos = handler.subscription_qos(topic)
    if qos is None:
        return False
    try:
        await handler.mqtt_publish(topic, data, qos, retain=False)
        return True
    except Exception as exc:  # connection gone or no PUBACK: the caller keeps what must be kept
        log.info("delivery to %s failed: %s", handler.device_id, type(exc).__name__)
        return False


class MethodError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Hub:
    def __init__(self, registry, hostname):
        self.registry = registry
        self.hostname = hostname
        self.connections = {}  # device id -> handler (broker.HubHandler)
        self._rids = itertools.count(1)
        self._methods = {}  # (device id, rid) -> (future, handler it was sent to)
        self._c2d_locks = {}
        self.telemetry_event = asyncio.Event()  # set on each stored message (monitor long-poll)
        self.stopping = asyncio.Event()  # set when the hub stops: long-polls answer at once

    # --- connections ---
    may_subscribe = staticmethod(may_subscribe)

    def connected(self, handler):
        self.connections[handler.device_id] = handler
        self.registry.set_connected(handler.device_id, True)

    def disconnected(self, handler):
        if self.connections.get(handler.device_id) is handler:
            del self.connections[handler.device_id]
            self.registry.set_connected(handler.device_id, False)
        for fut, owner in list(self._methods.values()):
            if owner is handler and not fut.done():
                fut.set_exception(MethodError(404, "device disconnected before answering"))

    async def sweep(self, period=1.0):
        """Drop connections whose token expired, or whose device was disabled or removed (e.g. by the CLI)."""
        while True:
            await asyncio.sleep(period)
            logs.flush()
            now = time.time()
            for dev, handler in list(self.connections.items()):
                row = self.registry.get_device(dev)
                if handler.expires is not None and handler.expires <= now:
                    handler.close("SAS token expired")
                elif row is None or row["status"] != "enabled":
                    handler.close("device disabled or removed")

    # --- device -> hub ---
    async def on_publish(self, handler, topic, data):
        """Handle a device PUBLISH; False means the topic is not the device's to use (close the connection)."""
        dev = handler.device_id
        events = "devices/%s/messages/events" % dev
        if topic == events or topic.startswith(events + "/"):
            props = decode_bag(topic[len(events) + 1:])
            seq = self.registry.add_telemetry(dev, bytes(data), props)
            self.telemetry_event.set()
            self.telemetry_event = asyncio.Event()
            log.debug("telemetry %s #%d", dev, seq)
            return True
        if topic.startswith("$iothub/twin/GET/"):
            rid = query(topic).get("$rid", "")
            twin = self.registry.get_twin(dev)
            if twin is None:  # removed from the registry while connected: the sweeper closes it
                return True
            await self.send(handler, "$iothub/twin/res/200/?$rid=%s" % quote(rid), json.dumps(twin).encode())
            return True
        if topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            rid = query(topic).get("$rid", "")
            try:
                patch = json.loads(bytes(data) or b"null")
                if not isinstance(patch, dict):
                    raise UsageError("a reported patch is a JSON object")
                version = self.registry.patch_reported(dev, patch)
            except (ValueError, RecursionError, UsageError) as e:  # bad JSON, too deep, too large
                reason = str(e) if isinstance(e, UsageError) else "not JSON (or nested too deep to read)"
                log.info("twin reported patch from %s refused: %s", dev, reason)
                await self.send(handler, "$iothub/twin/res/400/?$rid=%s" % quote(rid),
                                json.dumps({"message": reason}).encode())
                return True
            if version is None:
                return True
            await self.send(handler, "$iothub/twin/res/204/?$rid=%s&$version=%d" % (quote(rid), version), b"")
            return True
        if topic.startswith("$iothub/methods/res/"):
            status = topic.split("/")[3]
            rid = query(topic).get("$rid", "")
            fut = self._methods.get((dev, rid), (None, None))[0]
            if fut and not fut.done() and status.isdigit():
                try:
                    payload = json.loads(bytes(data)) if data else None
                except ValueError:
                    payload = bytes(data).decode("utf-8", "replace")
                fut.set_result((int(status), payload))
            return True
        return False

    async def on_subscribed(self, handler):
        await self.flush_c2d(handler.device_id)

    # --- hub -> device ---
    async def send(self, handler, topic, data):
        return await deliver(handler, topic, data)

    async def flush_c2d(self, device_id):
        handler = self.connections.get(device_id)
        if handler is None:
            return
        lock = self._c2d_locks.setdefault(device_id, asyncio.Lock())
        async with lock:
            for msg in self.registry.pending_c2d(device_id):
                topic = "devices/%s/messages/devicebound/%s" % (device_id, encode_bag(msg["properties"]))
                qos = handler.subscription_qos(topic)
                if qos is None:
                    return
                try:  # QoS 1 (the usual subscription): completed only when the device acknowledges it
                    await handler.mqtt_publish(topic, msg["body"], qos, retain=False)
                except Exception as exc:
                    log.info("C2D to %s not acknowledged (%s): kept for the next connection",
                             device_id, type(exc).__name__)
                    return
                self.registry.complete_c2d(msg["seq"])
                log.info("C2D delivered to %s", device_id)

    # --- service -> device ---
    async def send_c2d(self, device_id, body, properties):
        """Queue a C2D message (registry.QueueFull at IoT Hub's depth) and deliver it if the device is online."""
        seq = self.registry.enqueue_c2d(device_id, body, properties)
        asyncio.ensure_future(self.flush_c2d(device_id))
        return seq

    async def update_twin(self, device_id, *, tags=None, desired=None, replace=False, if_match=None):
        """The service's twin PATCH (merge) or PUT (replace); a desired change is pushed to the device."""
        version = self.registry.update_twin(device_id, tags=tags, desired=desired, replace=replace,
                                            if_match=if_match)
        if version is None or desired is None:
            return None
        handler = self.connections.get(device_id)
        if handler is not None:
            if replace:
                desired = self.registry.get_twin(device_id)["desired"]
            body = dict({k: v for k, v in desired.items() if not k.startswith("$")}, **{"$version": version})
            topic = "$iothub/twin/PATCH/properties/desired/?$version=%d" % version
            asyncio.ensure_future(self.send(handler, topic, json.dumps(body).encode()))
        return version

    async def invoke_method(self, device_id, name, payload, timeout):
        handler = self.connections.get(device_id)
        if handler is None or handler.subscription_qos("$iothub/methods/POST/%s/" % name) is None:
            raise MethodError(404, "device is not online (or not subscribed to direct methods)")
        rid = "%x" % next(self._rids)
        fut = asyncio.get_running_loop().create_future()
        self._methods[(device_id, rid)] = (fut, handler)
        try:
            topic = "$iothub/methods/POST/%s/?$rid=%s" % (name, rid)
            if not await self.send(handler, topic, json.dumps(payload).encode()):
                raise MethodError(404, "device is not online")
            try:
                return await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise MethodError(504, "the device did not answer within %ss" % timeout) from None
        finally:
            self._methods.pop((device_id, rid), None)
