"""The local DPS's MQTT endpoint: Azure DPS's registration protocol (api-version 2019-03-31).

A device connects over TLS (the hub's certificate, which also names the DPS hostname) with client id
`{registrationId}`, username `{idScope}/registrations/{registrationId}/api-version=2019-03-31` (any
further query accepted, as the SDK adds `&ClientVersion=...`) and either a SAS token
(`sr={idScope}/registrations/{registrationId}`, `skn=registration`) as password or a client certificate.
As on Azure, the CONNECT is accepted when it has that form (CONNACK 4 when not) and the credential is
checked with each request; refusals come back on the response topic with DPS's status codes.

  subscribe  $dps/registrations/res/#
  publish    $dps/registrations/PUT/iotdps-register/?$rid={rid}        {"registrationId": ..., "payload": ...}
     ->      $dps/registrations/res/202/?$rid={rid}&retry-after=3      {"operationId": ..., "status": "assigning"}
  publish    $dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}
     ->      $dps/registrations/res/200/?$rid={rid}                    {"operationId", "status": "assigned",
                                                                        "registrationState": {...}}
  errors     $dps/registrations/res/{400|401|403|404|429}/?$rid={rid}  {"errorCode", "trackingId", "message",
                                                                        "timestampUtc"}
The device is assigned (created in the hub's registry) when its register request is accepted; the
operation it polls holds the result for OPERATION_TTL seconds. Connections of one registration id
coexist (a CONNECT proves nothing yet, so it must not drop a device that is registering). A connection counts against its address's
limit of connections not logged in (broker.Gate) until a request of it authenticates; more than
REQUESTS_PER_WINDOW requests in WINDOW seconds are answered 429 with retry-after.
"""
import collections
import json
import logging
import os
import time
import uuid

from upyhub import sas
from upyhub.errors import UsageError
from upyhub.hub import auth, broker, dps, engine

log = logging.getLogger("upyhub.hub")
BASE = "$dps/registrations/"
REGISTER = BASE + "PUT/iotdps-register/"
QUERY = BASE + "GET/iotdps-get-operationstatus/"
RETRY_AFTER = 3  # seconds, what Azure's DPS answers with 202
MAX_REQUEST = 16 * 1024  # bytes of a register request's body
OPERATION_TTL = 600
MAX_OPERATIONS = 10000
REQUESTS_PER_WINDOW, WINDOW = 10, 10.0


def check_username(username, client_id):
    """`{idScope}/registrations/{clientId}/api-version=...`; returns the ID scope or raises auth.Refused(4)."""
    parts = (username or "").split("/", 3)
    if len(parts) < 4 or parts[1] != "registrations" or parts[2] != client_id or not parts[0] \
            or not parts[3].startswith("api-version="):
        raise auth.Refused(auth.BAD_CREDENTIALS, "username is not {idScope}/registrations/{registrationId}/"
                                                 "api-version=...")
    return parts[0]


class DpsBroker(broker.HubBroker):
    """The hub's hardened MQTT listener, logging in DPS's way (the credential is checked per request)."""

    label = "DPS: "
    max_message = MAX_REQUEST
    hold_ticket = True  # released by the first request that authenticates
    one_per_id = False  # a CONNECT is not authenticated yet: it must not drop a device registering

    def login(self, session, der, chain):
        if not session.client_id:
            raise auth.Refused(auth.BAD_CREDENTIALS, "empty client id")
        check_username(session.username, session.client_id)
        password = session.password
        if password:
            try:
                auth.parse_token(password.decode() if isinstance(password, bytes) else password)
            except (UsageError, UnicodeDecodeError):
                raise auth.Refused(auth.BAD_CREDENTIALS, "password is not a SAS token") from None
        return ("SAS token" if password else "X.509" if der else "no credential"), None


class DpsEngine:
    """Registration requests of connected devices (the DPS counterpart of engine.Hub)."""

    def __init__(self, registry, hub_hostname):
        self.registry = registry
        self.store = dps.Store(registry)
        self.attestation = dps.Attestation(self.store)
        self.hub_hostname = hub_hostname
        self.operations = collections.OrderedDict()  # operation id -> (registration id, registration row, time)

    @staticmethod
    def may_subscribe(registration_id, flt):
        return engine.filter_under(flt, (BASE + "res/",))

    def connected(self, handler):
        handler.dps_requests = collections.deque()

    def disconnected(self, handler):
        pass

    async def on_subscribed(self, handler):
        pass

    async def on_publish(self, handler, topic, data):
        """A register or operation-status request; False (close the connection) for any other topic."""
        if topic.startswith(REGISTER):
            kind = "register"
        elif topic.startswith(QUERY):
            kind = "query"
        else:
            return False
        q = engine.query(topic)
        rid = q.get("$rid", "")
        if not 1 <= len(rid) <= 64:
            return False
        tracking = str(uuid.uuid4())
        try:
            self._throttle(handler)
            if kind == "register":
                status, body, retry = 202, self.register(handler, bytes(data)), RETRY_AFTER
            else:
                status, body, retry = 200, self.query(handler, q.get("operationId", "")), None
        except (dps.DpsError, UsageError) as e:  # UsageError: a value the registry refuses, the request's fault
            err = e if isinstance(e, dps.DpsError) else dps.DpsError(400, str(e))
            log.warning("DPS: refused %s of %r: %s (%d)", kind, handler.device_id, err.reason, err.status)
            status, body, retry = err.status, err.body(tracking), err.retry_after
        topic = "%sres/%d/?$rid=%s" % (BASE, status, sas.quote(rid))
        if retry:
            topic += "&retry-after=%d" % retry
        await engine.deliver(handler, topic, json.dumps(body).encode())
        return True

    def _throttle(self, handler):
        now = time.monotonic()
        recent = handler.dps_requests
        while recent and now - recent[0] >= WINDOW:
            recent.popleft()
        if len(recent) >= REQUESTS_PER_WINDOW:
            raise dps.DpsError(429, "more than %d requests in %d s" % (REQUESTS_PER_WINDOW, WINDOW),
                               retry_after=int(WINDOW - (now - recent[0])) + 1)
        recent.append(now)

    @staticmethod
    def _check_registration_id(registration_id):
        try:
            sas.check_registration_id(registration_id)
        except UsageError as e:
            raise dps.DpsError(400, str(e)) from None

    def _authenticate(self, handler):
        registration_id = handler.device_id
        self._check_registration_id(registration_id)
        scope = check_username(handler.session.username, registration_id)
        if scope.lower() != self.store.id_scope().lower():
            raise dps.DpsError(401, "unknown ID scope %s" % scope[:64])
        password, der, chain = handler.credentials
        if isinstance(password, bytes):
            password = password.decode()
        enrollment = self.attestation.authenticate(scope, registration_id, password, der, chain)
        if handler.ticket is not None:
            handler.ticket.release()  # authenticated: no longer counts against its address
        return enrollment

    def register(self, handler, data):
        registration_id = handler.device_id
        self._check_registration_id(registration_id)
        try:
            doc = json.loads(data.decode("utf-8")) if data else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise dps.DpsError(400, "the request body is not JSON") from None
        if not isinstance(doc, dict) or doc.get("registrationId") != registration_id:
            raise dps.DpsError(400, "the body is not {\"registrationId\": <the client id>, \"payload\": ...}")
        payload = doc.get("payload")
        if len(json.dumps(payload)) > dps.MAX_PAYLOAD:
            raise dps.DpsError(400, "payload over %d bytes of JSON" % dps.MAX_PAYLOAD)
        enrollment = self._authenticate(handler)
        row = dps.assign(self.store, enrollment, registration_id, payload, self.hub_hostname)
        log.info("DPS: assigned %r to %s as device %r (%s enrollment %s, %s)", registration_id, self.hub_hostname,
                 row["device_id"], enrollment["kind"], enrollment["id"], enrollment["attestation"])
        op = "4.%s.%s" % (os.urandom(8).hex(), uuid.uuid4())
        self._keep(op, registration_id, row)
        return {"operationId": op, "status": "assigning"}

    def _keep(self, op, registration_id, row):
        now = time.monotonic()
        while self.operations and (len(self.operations) >= MAX_OPERATIONS
                                   or now - next(iter(self.operations.values()))[2] > OPERATION_TTL):
            self.operations.popitem(last=False)
        self.operations[op] = (registration_id, row, now)

    def query(self, handler, op):
        self._authenticate(handler)
        entry = self.operations.get(op)
        if entry is None or entry[0] != handler.device_id or time.monotonic() - entry[2] > OPERATION_TTL:
            raise dps.DpsError(404, "no operation %s for registration %s" % (op[:80], handler.device_id))
        return {"operationId": op, "status": "assigned",
                "registrationState": dps.Store.registration_json(entry[1])}
