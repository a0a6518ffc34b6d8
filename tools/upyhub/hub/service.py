"""The service API over HTTPS (aiohttp), modelled on IoT Hub's REST API (api-version 2021-04-12).

  GET    /devices?top=N                RegistryRead         list devices (top: 1..1000, else 1000)
  GET    /devices/{id}                 RegistryRead         a device (with its keys, as Azure shows them)
  PUT    /devices/{id}                 RegistryReadWrite    create; update with If-Match (etag or *, quoted or bare)
  DELETE /devices/{id}                 RegistryReadWrite    remove (If-Match optional)
  GET    /twins/{id}                   RegistryRead|ServiceConnect
  PATCH  /twins/{id}                   ServiceConnect       merge {"tags": {...}, "properties": {"desired": {...}}}
  PUT    /twins/{id}                   ServiceConnect       replace tags and desired
  POST   /twins/{id}/methods           ServiceConnect       {"methodName", "payload", "responseTimeoutInSeconds"}
  GET    /statistics/devices           RegistryRead         device counts
  GET    /statistics/service           ServiceConnect       connected devices
  POST   /devices/{id}/messages/devicebound   ServiceConnect   {"body": "...", "properties": {...}} (this hub's own)
  GET    /messages/events?deviceId=&since=&wait=   ServiceConnect   stored telemetry after seq `since`
Every request carries `Authorization: SharedAccessSignature ...&skn={policy}`. Errors are JSON
{"Message": "ErrorCode:Name;reason", "ExceptionMessage": ..., "errorCode": n} with IoT Hub's status codes:
401 for a credential that does not grant the call, 400 for anything malformed (token, JSON, parameters),
never 500 for what a client sent.
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
METHOD_NAME_RE = re.compile(r"^[^/#+$?\x00-\x1f]{1,100}$")
READ, WRITE, SERVICE = {"RegistryRead"}, {"RegistryReadWrite"}, {"ServiceConnect"}
MAX_C2D = 64 * 1024  # IoT Hub's cloud-to-device message limit
MAX_METHOD_PAYLOAD = 128 * 1024


class ApiError(Exception):
    """An answer other than success: HTTP status, IoT Hub error name and code, one-line reason."""

    def __init__(self, status, name, code, reason):
        super().__init__(reason)
        self.status, self.name, self.code, self.reason = status, name, code, reason


def bad(reason):
    return ApiError(400, "ArgumentInvalid", 400004, reason)


def _answer(err):
    doc = {"Message": "ErrorCode:%s;%s" % (err.name, err.reason), "ExceptionMessage": err.reason,
           "errorCode": err.code}
    return web.json_response(doc, status=err.status, headers={"iothub-errorcode": err.name})


@web.middleware
async def _errors(request, handler):
    """Every failure as IoT Hub's JSON error; malformed input of any kind is a 400, never a 500."""
    try:
        return await handler(request)
    except ApiError as e:
        return _answer(e)
    except web.HTTPException as e:
        if e.status >= 400:
            return _answer(ApiError(e.status, e.reason.replace(" ", ""), e.status * 1000, e.reason))
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, UnicodeError) as e:
        log.info("service API: malformed %s %s (%s)", request.method, request.path, type(e).__name__)
        return _answer(bad("malformed request"))
    except Exception as e:  # a bug, not the client's fault: one line in the log, no traceback to the client
        log.error("service API: %s %s failed: %s", request.method, request.path, type(e).__name__)
        return _answer(ApiError(500, "ServerError", 500001, "internal error"))


def _obj(doc, key, default=None):
    """doc[key] when it is an object (or absent/null: default); anything else is a 400."""
    value = doc.get(key) if isinstance(doc, dict) else None
    if value is None:
        return {} if default is None else default
    if not isinstance(value, dict):
        raise bad("%s must be a JSON object" % key)
    return value


def _etagged(doc):
    return web.json_response(doc, headers={"ETag": '"%s"' % doc["etag"]})


def make_app(hub):
    routes = web.RouteTableDef()
    registry = hub.registry

    def needs(rights):
        """Run the handler only for a request signed by a policy with one of `rights` (else 401, or 400)."""
        def wrap(handler):
            async def guarded(request):
                try:
                    auth.service(registry, hub.hostname, request.headers.get("Authorization"), rights)
                except auth.Denied as d:
                    log.warning("service API refused %s %s: %s", request.method, request.path, d.reason)
                    if d.malformed:
                        raise bad(d.reason) from None
                    raise ApiError(401, "IotHubUnauthorizedAccess", 401003, "Unauthorized: " + d.reason) from None
                return await handler(request)
            return guarded
        return wrap

    async def body_json(request):
        try:
            return await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise bad("body is not JSON") from None

    def device_or_404(device_id):
        row = registry.get_device(device_id)
        if row is None:
            raise ApiError(404, "DeviceNotFound", 404001, "device %s not found" % device_id)
        return row

    async def device_and_body(request):
        """The URL's device id (404 when unknown) and the request's JSON body (400 when not JSON)."""
        device_id = request.match_info["id"]
        device_or_404(device_id)
        return device_id, await body_json(request)

    def precondition():
        return ApiError(412, "PreconditionFailed", 412002, "etag does not match")

    @routes.get("/devices")
    @needs(READ)
    async def list_devices(request):
        top = request.query.get("top")
        if top is not None and not re.fullmatch(r"-?[0-9]{1,9}", top):
            raise bad("top must be an integer")
        rows = registry.list_devices(int(top) if top is not None else None)
        return web.json_response([registry.device_json(r) for r in rows])

    @routes.get("/devices/{id}")
    @needs(READ)
    async def get_device(request):
        return _etagged(registry.device_json(device_or_404(request.match_info["id"])))

    @routes.put("/devices/{id}")
    @needs(WRITE)
    async def put_device(request):
        device_id = request.match_info["id"]
        doc = await body_json(request)
        if not isinstance(doc, dict) or doc.get("deviceId", device_id) != device_id:
            raise bad("the body must be a device whose deviceId matches the URL")
        a = _obj(doc, "authentication")
        keys, thumbs = _obj(a, "symmetricKey"), _obj(a, "x509Thumbprint")
        fields = {"auth": a.get("type") or "sas", "status": doc.get("status") or "enabled",
                  "primary_key": keys.get("primaryKey"), "secondary_key": keys.get("secondaryKey"),
                  "primary_thumb": thumbs.get("primaryThumbprint"),
                  "secondary_thumb": thumbs.get("secondaryThumbprint")}
        if not all(v is None or isinstance(v, str) for v in fields.values()):
            raise bad("device fields must be strings")
        if _obj(doc, "capabilities").get("iotEdge"):
            raise bad("IoT Edge devices are not supported by the local hub")
        try:
            row = registry.put_device(device_id, if_match=request.headers.get("If-Match"), **fields)
        except UsageError as e:
            raise bad(str(e)) from None
        except reg.Conflict:
            raise ApiError(409, "DeviceAlreadyExists", 409001,
                           "device %s already exists (update with If-Match)" % device_id) from None
        except reg.PreconditionFailed:
            raise precondition() from None
        log.info("registry: device %s written (%s, %s)", device_id, row["auth"], row["status"])
        return _etagged(registry.device_json(row))

    @routes.delete("/devices/{id}")
    @needs(WRITE)
    async def delete_device(request):
        device_id = request.match_info["id"]
        try:
            found = registry.delete_device(device_id, request.headers.get("If-Match"))
        except reg.PreconditionFailed:
            raise precondition() from None
        if not found:
            device_or_404(device_id)
        handler = hub.connections.get(device_id)
        if handler is not None:
            handler.close("device removed from the registry")
        return web.Response(status=204)

    @routes.get("/twins/{id}")
    @needs(READ | SERVICE)
    async def get_twin(request):
        device_or_404(request.match_info["id"])
        return _etagged(registry.twin_json(request.match_info["id"]))

    async def write_twin(request, replace):
        device_id, doc = await device_and_body(request)
        if not isinstance(doc, dict):
            raise bad("the body must be a twin: {\"tags\": {...}, \"properties\": {\"desired\": {...}}}")
        props = _obj(doc, "properties")
        tags = doc.get("tags")
        desired = props.get("desired")
        if replace:  # PUT: the twin's tags and desired properties become the body's (absent: empty)
            tags = {} if tags is None else tags
            desired = {} if desired is None else desired
        elif tags is None and desired is None:
            raise bad("a twin patch needs tags or properties.desired")
        try:
            await hub.update_twin(device_id, tags=tags, desired=desired, replace=replace,
                                  if_match=request.headers.get("If-Match"))
        except UsageError as e:  # not an object, over a size or depth limit
            raise bad(str(e)) from None
        except reg.PreconditionFailed:
            raise precondition() from None
        except LookupError:
            device_or_404(device_id)
        return _etagged(registry.twin_json(device_id))

    @routes.patch("/twins/{id}")
    @needs(SERVICE)
    async def patch_twin(request):
        return await write_twin(request, replace=False)

    @routes.put("/twins/{id}")
    @needs(SERVICE)
    async def replace_twin(request):
        return await write_twin(request, replace=True)

    @routes.post("/twins/{id}/methods")
    @needs(SERVICE)
    async def invoke(request):
        device_id, doc = await device_and_body(request)
        name = doc.get("methodName") if isinstance(doc, dict) else None
        if not isinstance(name, str) or not METHOD_NAME_RE.match(name):
            raise bad("methodName is missing or has a character not allowed in a topic")
        timeout = doc.get("responseTimeoutInSeconds", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= 300:
            raise bad("responseTimeoutInSeconds must be 1..300")
        payload = doc.get("payload")
        if len(json.dumps(payload)) > MAX_METHOD_PAYLOAD:
            raise ApiError(413, "MessageTooLarge", 413001, "method payload over 128 KB")
        try:
            status, answer = await hub.invoke_method(device_id, name, payload, timeout)
        except engine.MethodError as e:
            name_code = {404: ("DeviceNotOnline", 404103), 504: ("GatewayTimeout", 504101)}
            err, code = name_code.get(e.status, ("MethodError", e.status * 1000))
            raise ApiError(e.status, err, code, str(e)) from None
        return web.json_response({"status": status, "payload": answer})

    @routes.get("/statistics/devices")
    @needs(READ)
    async def device_statistics(request):
        st = registry.statistics()
        return web.json_response({k: st[k] for k in ("totalDeviceCount", "enabledDeviceCount",
                                                      "disabledDeviceCount")})

    @routes.get("/statistics/service")
    @needs(SERVICE)
    async def service_statistics(request):
        return web.json_response({"connectedDeviceCount": registry.statistics()["connectedDeviceCount"]})

    @routes.post("/devices/{id}/messages/devicebound")
    @needs(SERVICE)
    async def c2d(request):
        device_id, doc = await device_and_body(request)
        body = doc.get("body", "") if isinstance(doc, dict) else None
        props = _obj(doc, "properties") if isinstance(doc, dict) else None
        if not isinstance(body, str) or not isinstance(props, dict) or \
                not all(isinstance(k, str) and isinstance(v, str) for k, v in props.items()):
            raise bad("body must be {\"body\": string, \"properties\": {string: string}}")
        data = body.encode()
        if len(data) > MAX_C2D:
            raise ApiError(413, "MessageTooLarge", 413001, "C2D message over 64 KB")
        props = dict(props)
        props.setdefault("$.mid", str(uuid.uuid4()))
        props["$.to"] = "/devices/%s/messages/devicebound" % device_id
        try:
            seq = await hub.send_c2d(device_id, data, props)
        except reg.QueueFull:
            raise ApiError(403, "DeviceMaximumQueueDepthExceeded", 403004,
                           "device %s already has %d messages queued" % (device_id, reg.C2D_QUEUE_MAX)) from None
        return web.json_response({"messageId": props["$.mid"], "seq": seq})

    @routes.get("/messages/events")
    @needs(SERVICE)
    async def events(request):
        since, wait = request.query.get("since", "0"), request.query.get("wait", "0")
        if not re.fullmatch(r"[0-9]{1,18}", since) or not re.fullmatch(r"[0-9]{1,3}(\.[0-9]{1,3})?", wait):
            raise bad("since must be an integer and wait a number of seconds")
        since, wait = int(since), min(float(wait), 30.0)
        device = request.query.get("deviceId") or None
        rows = registry.telemetry(device, since)
        if not rows and wait > 0 and not hub.stopping.is_set():  # long-poll: answer as soon as one arrives
            waiters = [asyncio.ensure_future(hub.telemetry_event.wait()), asyncio.ensure_future(hub.stopping.wait())]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
            rows = registry.telemetry(device, since)
        return web.json_response(rows)

    app = web.Application(client_max_size=300 * 1024, middlewares=[_errors])
    app.add_routes(routes)
    return app
