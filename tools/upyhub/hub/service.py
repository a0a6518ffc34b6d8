"""The service API over HTTPS (aiohttp), modelled on IoT Hub's REST API.

  GET    /devices                      RegistryRead         list devices
  GET    /devices/{id}                 RegistryRead         a device (with its keys, as Azure shows them)
  PUT    /devices/{id}                 RegistryReadWrite    create, or update with If-Match (etag or *)
  DELETE /devices/{id}                 RegistryReadWrite    remove (If-Match optional)
  GET    /twins/{id}                   RegistryRead|ServiceConnect
  PATCH  /twins/{id}                   ServiceConnect       {"properties": {"desired": {...}}}, If-Match optional
  POST   /twins/{id}/methods           ServiceConnect       {"methodName", "payload", "responseTimeoutInSeconds"}
  POST   /devices/{id}/messages/devicebound   ServiceConnect   {"body": "...", "properties": {...}} (this hub's own)
  GET    /messages/events?deviceId=&since=&wait=   ServiceConnect   stored telemetry after seq `since`
Every request carries `Authorization: SharedAccessSignature ...&skn={policy}`. Errors are JSON
{"Message": ..., "ExceptionMessage": ...} with Azure's status codes (401 for any auth failure).
"""
import asyncio
import json
import logging
import re
import uuid

from aiohttp import web

from upyhub.errors import UsageError
from upyhub.hub import auth, engine, registry as reg

log = logging.getLogger("upyhub.hub")
METHOD_NAME_RE = re.compile(r"^[^/#+$?]{1,100}$")
READ, WRITE, SERVICE = {"RegistryRead"}, {"RegistryReadWrite"}, {"ServiceConnect"}


def _error(status, message):
    return web.json_response({"Message": message, "ExceptionMessage": message}, status=status)


def make_app(hub):
    routes = web.RouteTableDef()
    registry = hub.registry

    def needs(rights):
        """Run the handler only for a request signed by a policy with one of `rights` (else 401)."""
        def wrap(handler):
            async def guarded(request):
                try:
                    auth.service(registry, hub.hostname, request.headers.get("Authorization"), rights)
                except auth.Denied as d:
                    log.warning("service API refused %s %s: %s", request.method, request.path, d.reason)
                    return _error(401, "Unauthorized: " + d.reason)
                return await handler(request)
            return guarded
        return wrap

    async def body_json(request):
        try:
            return await request.json()
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text=json.dumps({"Message": "body is not JSON"}),
                                     content_type="application/json") from None

    def device_or_404(device_id):
        row = registry.get_device(device_id)
        if row is None:
            raise web.HTTPNotFound(text=json.dumps({"Message": "DeviceNotFound: %s" % device_id}),
                                   content_type="application/json")
        return row

    async def device_and_body(request):
        """The URL's device id (404 when unknown) and the request's JSON body (400 when not JSON)."""
        device_id = request.match_info["id"]
        device_or_404(device_id)
        return device_id, await body_json(request)

    @routes.get("/devices")
    @needs(READ)
    async def list_devices(request):
        return web.json_response([registry.device_json(r) for r in registry.list_devices()])

    @routes.get("/devices/{id}")
    @needs(READ)
    async def get_device(request):
        return web.json_response(registry.device_json(device_or_404(request.match_info["id"])))

    @routes.put("/devices/{id}")
    @needs(WRITE)
    async def put_device(request):
        device_id = request.match_info["id"]
        doc = await body_json(request)
        if not isinstance(doc, dict) or doc.get("deviceId", device_id) != device_id:
            return _error(400, "deviceId in the body does not match the URL")
        a = doc.get("authentication") or {}
        keys = a.get("symmetricKey") or {}
        thumbs = a.get("x509Thumbprint") or {}
        try:
            row = registry.put_device(device_id, auth=a.get("type", "sas"), status=doc.get("status", "enabled"),
                                      primary_key=keys.get("primaryKey"), secondary_key=keys.get("secondaryKey"),
                                      primary_thumb=thumbs.get("primaryThumbprint"),
                                      secondary_thumb=thumbs.get("secondaryThumbprint"),
                                      if_match=request.headers.get("If-Match"))
        except UsageError as e:
            return _error(400, str(e))
        except reg.Conflict:
            return _error(409, "DeviceAlreadyExists: %s (update with If-Match)" % device_id)
        except reg.PreconditionFailed:
            return _error(412, "PreconditionFailed: etag does not match")
        log.info("registry: device %s written (%s, %s)", device_id, row["auth"], row["status"])
        return web.json_response(registry.device_json(row))

    @routes.delete("/devices/{id}")
    @needs(WRITE)
    async def delete_device(request):
        try:
            found = registry.delete_device(request.match_info["id"], request.headers.get("If-Match"))
        except reg.PreconditionFailed:
            return _error(412, "PreconditionFailed: etag does not match")
        if not found:
            return _error(404, "DeviceNotFound: %s" % request.match_info["id"])
        handler = hub.connections.get(request.match_info["id"])
        if handler is not None:
            handler.close("device removed from the registry")
        return web.Response(status=204)

    @routes.get("/twins/{id}")
    @needs(READ | SERVICE)
    async def get_twin(request):
        device_or_404(request.match_info["id"])
        return web.json_response(registry.get_twin(request.match_info["id"]))

    @routes.patch("/twins/{id}")
    @needs(SERVICE)
    async def patch_twin(request):
        device_id, doc = await device_and_body(request)
        desired = (doc.get("properties") or {}).get("desired") if isinstance(doc, dict) else None
        if not isinstance(desired, dict):
            return _error(400, "body must be {\"properties\": {\"desired\": {...}}}")
        try:
            await hub.update_desired(device_id, desired, request.headers.get("If-Match"))
        except reg.PreconditionFailed:
            return _error(412, "PreconditionFailed: etag does not match")
        return web.json_response(registry.get_twin(device_id))

    @routes.post("/twins/{id}/methods")
    @needs(SERVICE)
    async def invoke(request):
        device_id, doc = await device_and_body(request)
        name = doc.get("methodName") if isinstance(doc, dict) else None
        if not isinstance(name, str) or not METHOD_NAME_RE.match(name):
            return _error(400, "methodName is missing or has a character not allowed in a topic")
        timeout = doc.get("responseTimeoutInSeconds", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= 300:
            return _error(400, "responseTimeoutInSeconds must be 1..300")
        try:
            status, payload = await hub.invoke_method(device_id, name, doc.get("payload"), timeout)
        except engine.MethodError as e:
            code = {404: 404103, 504: 504101}.get(e.status, 0)
            return web.json_response({"Message": str(e), "errorCode": code}, status=e.status)
        return web.json_response({"status": status, "payload": payload})

    @routes.post("/devices/{id}/messages/devicebound")
    @needs(SERVICE)
    async def c2d(request):
        device_id, doc = await device_and_body(request)
        body = doc.get("body", "") if isinstance(doc, dict) else None
        props = doc.get("properties") or {} if isinstance(doc, dict) else None
        if not isinstance(body, str) or not isinstance(props, dict) or \
                not all(isinstance(k, str) and isinstance(v, str) for k, v in props.items()):
            return _error(400, "body must be {\"body\": string, \"properties\": {string: string}}")
        props = dict(props)
        props.setdefault("$.mid", str(uuid.uuid4()))
        props["$.to"] = "/devices/%s/messages/devicebound" % device_id
        seq = await hub.send_c2d(device_id, body.encode(), props)
        return web.json_response({"messageId": props["$.mid"], "seq": seq})

    @routes.get("/messages/events")
    @needs(SERVICE)
    async def events(request):
        try:
            since = int(request.query.get("since", "0"))
            wait = min(float(request.query.get("wait", "0")), 30.0)
        except ValueError:
            return _error(400, "since must be an integer and wait a number of seconds")
        device = request.query.get("deviceId") or None
        rows = registry.telemetry(device, since)
        if not rows and wait > 0:  # long-poll: answer as soon as a message arrives
            try:
                await asyncio.wait_for(hub.telemetry_event.wait(), wait)
            except asyncio.TimeoutError:
                pass
            rows = registry.telemetry(device, since)
        return web.json_response(rows)

    app = web.Application(client_max_size=300 * 1024)
    app.add_routes(routes)
    return app
