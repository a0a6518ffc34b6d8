"""A device on the local DPS's MQTT endpoint (paho-mqtt 1.6.1), speaking Azure DPS's registration protocol.

TLS verifies the hub CA for the DPS hostname (global.azure-devices-provisioning.net) while connecting to
the hub's address, as a device does with a private hosts entry.
"""
import itertools
import json
import ssl
import time
import urllib.parse

from hubdev import Device, wait_for
from upyhub import sas


def registration_token(scope, registration_id, key, ttl=600, skn="registration", expiry=None):
    return sas.mint("%s/registrations/%s" % (scope, registration_id), key, expiry or int(time.time()) + ttl,
                    policy=skn)


def name_context(cafile, server_hostname, cert=None):
    """An SSLContext that verifies `server_hostname` whatever address paho connects to."""
    class Ctx(ssl.SSLContext):
        def wrap_socket(self, sock, server_hostname=None, **kw):
            return super().wrap_socket(sock, server_hostname=self.name, **kw)

    ctx = Ctx(ssl.PROTOCOL_TLS_CLIENT)
    ctx.name = server_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(cafile))
    if cert:
        ctx.load_cert_chain(*[str(c) for c in cert])
    return ctx


def parse_response(topic):
    """($dps/registrations/res/{status}/?$rid=..&retry-after=..) -> (status, {name: value})."""
    head, _, query = topic.partition("?")
    status = int(head.split("/")[3])
    return status, {urllib.parse.unquote(k.lstrip("$")): urllib.parse.unquote(v)
                    for k, _, v in (p.partition("=") for p in query.split("&") if p)}


class DpsClient(Device):
    """One connection to the DPS endpoint (subscribed to its responses once accepted); never reconnects."""

    def __init__(self, hub, registration_id, password=None, cert=None, scope=None, username=None, subscribe=True):
        self.registration_id = registration_id
        self._rids = itertools.count(1)
        user = username if username is not None else \
            "%s/registrations/%s/api-version=2019-03-31" % (scope or hub.id_scope, registration_id)
        super().__init__(hub, registration_id, password, user, address=(hub.dps_host, hub.dps_port),
                         context=name_context(hub.ca_path, hub.dps_hostname, cert))
        if self.wait_connack() == 0 and subscribe:
            self.subscribe("$dps/registrations/res/#")

    def send(self, topic_head, body, extra=""):
        """Publish a request; returns its $rid."""
        rid = str(next(self._rids))
        self.client.publish("%s?$rid=%s%s" % (topic_head, rid, extra), body, qos=1)
        return rid

    def answer(self, rid):
        """(status, response topic properties, JSON body) of the response to request `rid`."""
        def find():
            for t, p in self.messages:
                status, props = parse_response(t)
                if props.get("rid") == rid:
                    return status, props, json.loads(p)
            return None
        return wait_for(find, what="a DPS response to request %s" % rid)

    def request(self, topic_head, body, extra=""):
        return self.answer(self.send(topic_head, body, extra))

    def register(self, payload=None, registration_id=None, body=None):
        if body is None:
            body = json.dumps({"registrationId": registration_id or self.registration_id, "payload": payload})
        return self.request("$dps/registrations/PUT/iotdps-register/", body)

    def poll(self, operation_id, wait=True):
        rid = self.send("$dps/registrations/GET/iotdps-get-operationstatus/", " ",
                        "&operationId=" + urllib.parse.quote(operation_id, safe=""))
        return self.answer(rid) if wait else rid

    def provision(self, payload=None):
        """Register and poll as a device does; returns the 200 answer's JSON."""
        status, props, doc = self.register(payload)
        assert status == 202, (status, doc)
        status, props, doc = self.poll(doc["operationId"])
        assert status == 200, (status, doc)
        return doc
