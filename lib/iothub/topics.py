# IoT Hub MQTT topics: what to publish to and what arrived. Pure string work, no I/O.
from iothub.quote import quote

API_VERSION = "2021-04-12"

TWIN_RES = "$iothub/twin/res/"
DESIRED = "$iothub/twin/PATCH/properties/desired/"
METHOD_POST = "$iothub/methods/POST/"

# The largest bodies IoT Hub sends on each topic (its documented limits, plus room for the JSON
# around a twin document): anything larger is not from a hub and is skipped unread.
C2D_MAX = 65536
METHOD_MAX = 131072
DESIRED_MAX = 32768 + 1024
TWIN_DOC_MAX = 2 * 32768 + 2048
DPS_MAX = 8192  # a registration state, with the payload the solution passes back

_rid = 0


def username(hostname, device_id):
    return hostname + "/" + device_id + "/?api-version=" + API_VERSION


def subscriptions(device_id):
    # (filter, qos). Four of the hub's five allowed subscriptions; C2D is the only QoS 1 one
    # because the hub keeps C2D messages until acknowledged.
    return (
        ("devices/" + device_id + "/messages/devicebound/#", 1),
        (TWIN_RES + "#", 0),
        (DESIRED + "#", 0),
        (METHOD_POST + "#", 0),
    )


def encode_bag(properties=None, content_type=None, encoding=None):
    # System properties keep their literal `$.` names; every value (and user key) is URL-encoded.
    parts = []
    if properties:
        for k in properties:
            parts.append(quote(str(k)) + "=" + quote(str(properties[k])))
    if content_type:
        parts.append("$.ct=" + quote(content_type))
    if encoding:
        parts.append("$.ce=" + quote(encoding))
    return "&".join(parts)


def telemetry_bag(properties=None, content_type=None, encoding=None, mid=None):
    # The part of a telemetry topic after events/ (what the outbox keeps: the device id may change
    # before the message is sent, when DPS assigns one).
    bag = encode_bag(properties, content_type, encoding)
    if mid:
        bag += ("&" if bag else "") + "$.mid=" + quote(mid)
    return bag


def events(device_id):
    return "devices/" + device_id + "/messages/events/"


def telemetry(device_id, properties=None, content_type=None, encoding=None, mid=None):
    return events(device_id) + telemetry_bag(properties, content_type, encoding, mid)


def unquote(s):
    # Raises ValueError (UnicodeError) when the escapes do not decode to UTF-8.
    if "%" not in s:
        return s
    b = s.encode()
    out = bytearray()
    i = 0
    n = len(b)
    while i < n:
        c = b[i]
        if c == 37 and i + 2 < n:  # '%' followed by two hex digits
            try:
                out.append(int(b[i + 1 : i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out.append(c)
        i += 1
    return out.decode()


def parse_bag(bag):
    # "k=v&k2=v2" -> {"k": "v", "k2": "v2"}; a leading "?" is allowed. Keys without "=" map to "".
    props = {}
    if bag.startswith("?"):
        bag = bag[1:]
    if not bag:
        return props
    for part in bag.split("&"):
        if not part:
            continue
        i = part.find("=")
        if i < 0:
            props[unquote(part)] = ""
        else:
            props[unquote(part[:i])] = unquote(part[i + 1 :])
    return props


def next_rid():
    # Request ids only have to be unique among this device's requests in flight.
    global _rid
    _rid = (_rid + 1) & 0x3FFFFFFF
    return str(_rid)


def twin_get(rid):
    return "$iothub/twin/GET/?$rid=" + rid


def twin_reported(rid):
    return "$iothub/twin/PATCH/properties/reported/?$rid=" + rid


def method_response(status, rid):
    return "$iothub/methods/res/" + str(int(status)) + "/?$rid=" + rid


def _int(s, default=None):
    try:
        return int(s)
    except (ValueError, TypeError):
        return default


def limit(topic, device_id):
    # The largest body this device accepts on a topic (bytes): 0 for topics that are not its own.
    if not isinstance(topic, (bytes, bytearray)):
        topic = topic.encode()
    if topic.startswith(b"devices/") and topic[8:].startswith(device_id.encode() + b"/messages/devicebound/"):
        return C2D_MAX
    if topic.startswith(b"$iothub/methods/POST/"):
        return METHOD_MAX
    if topic.startswith(b"$iothub/twin/PATCH/properties/desired/"):
        return DESIRED_MAX
    if topic.startswith(b"$iothub/twin/res/"):
        return TWIN_DOC_MAX
    if topic.startswith(b"$dps/registrations/res/"):
        return DPS_MAX
    return 0


def parse(topic, device_id):
    # Classify an incoming topic (str or bytes). Returns a tuple, or None for foreign or unreadable
    # topics (not UTF-8, a bad %-escape, a method request without $rid); it never raises:
    #   ("c2d", props) | ("twin", status, rid, version) | ("desired", version) | ("method", name, rid)
    try:
        return _parse(topic, device_id)
    except (ValueError, UnicodeError, TypeError):
        return None


def _parse(topic, device_id):
    if isinstance(topic, (bytes, bytearray)):
        topic = topic.decode()
    c2d = "devices/" + device_id + "/messages/devicebound/"
    if topic.startswith(c2d):
        return ("c2d", parse_bag(topic[len(c2d) :]))
    if topic.startswith(TWIN_RES):
        rest = topic[len(TWIN_RES) :]
        i = rest.find("/")
        status = _int(rest if i < 0 else rest[:i])
        if status is None:
            return None
        q = parse_bag(rest[i + 1 :]) if i >= 0 else {}
        return ("twin", status, q.get("$rid"), _int(q.get("$version")))
    if topic.startswith(DESIRED):
        q = parse_bag(topic[len(DESIRED) :])
        return ("desired", _int(q.get("$version")))
    if topic.startswith(METHOD_POST):
        rest = topic[len(METHOD_POST) :]
        i = rest.find("/")
        if i <= 0:
            return None
        q = parse_bag(rest[i + 1 :])
        rid = q.get("$rid")
        if not rid:
            return None
        return ("method", unquote(rest[:i]), rid)
    return None
