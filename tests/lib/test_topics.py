"""iothub.topics on the unix port (sources and .mpy): usernames, property bags, topic parsing."""
import json
import urllib.parse

import pytest

SNIPPET = r"""
import json
from iothub import topics as t
out = {}
out["user"] = t.username("h.azure-devices.net", "dev-1")
out["tele"] = t.telemetry("dev-1", {"a b": "c/d&e=f", "n": 3}, "application/json", "utf-8")
out["tele0"] = t.telemetry("dev-1")
out["c2d"] = t.parse(b"devices/dev-1/messages/devicebound/%24.mid=m1&%24.to=%2Fdevices%2Fdev-1&k%20x=v%26w", "dev-1")
out["twin"] = t.parse("$iothub/twin/res/204/?$rid=17&$version=5", "dev-1")
out["twin_nov"] = t.parse("$iothub/twin/res/200/?$rid=18", "dev-1")
out["desired"] = t.parse("$iothub/twin/PATCH/properties/desired/?$version=9", "dev-1")
out["method"] = t.parse("$iothub/methods/POST/do%20it/?$rid=a1", "dev-1")
out["foreign"] = [t.parse(x, "dev-1") for x in ("devices/dev-2/messages/devicebound/", "$iothub/methods/POST/x/", "other/topic", "$iothub/twin/res/abc/?$rid=1")]
out["rids"] = [t.next_rid() for i in range(3)]
out["get"] = t.twin_get("5")
out["rep"] = t.twin_reported("6")
out["mres"] = t.method_response(200, "a1")
out["subs"] = t.subscriptions("dev-1")
out["bad_pct"] = t.unquote("100%zz%4")
print(json.dumps(out))
"""


@pytest.mark.parametrize("mpy", [False, True], ids=["py", "mpy"])
def test_topics(run_mp, mpy):
    p = run_mp(SNIPPET, mpy=mpy, heapsize="32K")
    assert p.returncode == 0, p.stderr + p.stdout
    out = json.loads(p.stdout)
    assert out["user"] == "h.azure-devices.net/dev-1/?api-version=2021-04-12"
    prefix = "devices/dev-1/messages/events/"
    assert out["tele"].startswith(prefix)
    bag = out["tele"][len(prefix):]
    # what the hub (and urllib) decode from it
    assert dict(urllib.parse.parse_qsl(bag)) == {"a b": "c/d&e=f", "n": "3", "$.ct": "application/json",
                                                 "$.ce": "utf-8"}
    assert "$.ct=application%2Fjson" in bag  # system property names stay literal
    assert out["tele0"] == prefix
    assert out["c2d"] == ["c2d", {"$.mid": "m1", "$.to": "/devices/dev-1", "k x": "v&w"}]
    assert out["twin"] == ["twin", 204, "17", 5]
    assert out["twin_nov"] == ["twin", 200, "18", None]
    assert out["desired"] == ["desired", 9]
    assert out["method"] == ["method", "do it", "a1"]
    assert out["foreign"] == [None, None, None, None]
    assert len(set(out["rids"])) == 3
    assert out["get"] == "$iothub/twin/GET/?$rid=5"
    assert out["rep"] == "$iothub/twin/PATCH/properties/reported/?$rid=6"
    assert out["mres"] == "$iothub/methods/res/200/?$rid=a1"
    assert [s[0] for s in out["subs"]] == ["devices/dev-1/messages/devicebound/#", "$iothub/twin/res/#",
                                           "$iothub/twin/PATCH/properties/desired/#", "$iothub/methods/POST/#"]
    assert out["bad_pct"] == "100%zz%4"


HOSTILE = r"""
import json
from iothub import topics as t
cases = [b"$iothub/methods/POST/%FF/?$rid=1", b"devices/dev-1/messages/devicebound/\xff\xfe=1",
         b"devices/dev-1/messages/devicebound/k=%C3%28", b"$iothub/methods/POST/ping/", b"$iothub/methods/POST/ping/?$rid=",
         b"$iothub/twin/res/200/?$rid=%FF", b"\xc3\x28", b"", bytearray(b"$iothub/twin/PATCH/properties/desired/?$version=%80")]
out = [t.parse(c, "dev-1") for c in cases]
lim = [t.limit(x, "dev-1") for x in (b"devices/dev-1/messages/devicebound/a=b", b"devices/dev-2/messages/devicebound/",
       b"$iothub/methods/POST/x/?$rid=1", b"$iothub/twin/PATCH/properties/desired/?$version=2",
       b"$iothub/twin/res/200/?$rid=1", b"other", bytearray(b"devices/dev-1/messages/devicebound/"))]
print(json.dumps([out, lim]))
"""


@pytest.mark.parametrize("mpy", [False, True], ids=["py", "mpy"])
def test_hostile_topics_never_raise(run_mp, mpy):
    # %FF, bytes that are not UTF-8, a method request without $rid: ignored (None), never an exception
    p = run_mp(HOSTILE, mpy=mpy, heapsize="32K")
    assert p.returncode == 0, p.stderr + p.stdout
    out, lim = json.loads(p.stdout)
    assert out == [None] * 9
    # the largest body accepted per topic: IoT Hub's limits; other devices' and foreign topics get none
    assert lim == [65536, 0, 131072, 33792, 67584, 0, 65536]
