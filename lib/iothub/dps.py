# Device Provisioning Service: the first boot asks DPS which hub to join and under which device id
# (MQTT, as Azure's: client id = registration id, username {idScope}/registrations/{registrationId}/
# api-version=2019-03-31, a SAS token scoped to {idScope}/registrations/{registrationId} with
# skn=registration, signed by the device's own key: for a group enrollment the key derived from the
# group key at the factory; the group key itself is never on the device). The answer is kept on
# flash (config.ASSIGNMENT: a JSON line and its SHA-256, written whole and renamed into place) so the
# next boots connect straight to the hub. Same TLS rules as the hub: pinned roots, the DPS hostname
# verified, TLS 1.2+. Loaded only to register, like iothub.connect.
import json
import time

from iothub import clock, topics, transport
from iothub.connect import Failure, why

API = "2019-03-31"
RES = "$dps/registrations/res/"
_STATUS = {400: "bad request (registration id or payload)", 401: "not authorized: wrong key or certificate",
           403: "the enrollment is disabled", 404: "no enrollment for this registration id",
           412: "the registration id does not match the certificate", 429: "throttled"}


def register(cfg, key, roots, root, cert=None, ckey=None, log=print):
    # -> (hub hostname, device id), saved on flash. Raises connect.Failure.
    d = cfg["dps"]
    scope, reg = d["id_scope"], d["registration_id"]
    password = ""
    if cert is None:
        try:
            from iothub import sas

            password = sas.token(scope + "/registrations/" + reg, key,
                                 clock.require_set() + cfg["token_ttl"], policy="registration")
        except ValueError as e:
            raise Failure("wait", "cannot mint a DPS token: %s" % e)
        finally:
            sas = None
            transport._unload("sas", "crypto")
    try:
        att = roots.attempt()
        from iothub import handshake, mqtt, wire
    except MemoryError:
        raise Failure("memory", "not enough memory to register with DPS")
    except ValueError as e:
        raise Failure("wait", "cannot register: %s" % e)
    host = d["endpoint"]
    try:
        sock, raw = mqtt.connect(reg, d.get("gateway") or host, d["port"],
                                 scope + "/registrations/" + reg + "/api-version=" + API, password, 60,
                                 handshake.params(host, att.data, cert, ckey, cfg["io_timeout"]))
    except handshake.TLSError as e:
        att.done("verify" if e.kind == "verify" else "untried")
        raise Failure("memory" if e.kind == "memory" else "wait", "DPS TLS refused: %s" % e)
    except mqtt.Refused as e:
        att.done("ok")
        raise Failure("wait", "DPS refused the registration's credentials (CONNACK %d)" % e.code)
    except mqtt.Failed as e:
        att.done("ok" if e.tls else "untried")
        raise Failure("memory" if e.memory else "wait", "DPS connect failed: %s" % e)
    finally:
        password = None
        transport._unload("handshake", "mqtt", "umqtt.simple")
    att.done("ok")
    c = wire.Conn(sock, raw, cfg["io_timeout"] * 1000)
    try:
        hub, device = _register(c, reg, d.get("payload"), cfg["io_timeout"], log)
    except OSError as e:
        raise Failure("wait", "DPS connection lost: %s" % why(e))
    finally:
        c.close(True)
    _save(root, scope, reg, hub, device)
    return hub, device


def _register(c, reg, payload, timeout, log):
    from iothub.connect import _subscribe

    _subscribe(c, c.next_pid(), ((RES + "#", 1),))
    rid = 1
    body = {"registrationId": reg}
    if payload is not None:
        body["payload"] = payload
    c.publish("$dps/registrations/PUT/iotdps-register/?$rid=%d" % rid, json.dumps(body))
    deadline = time.ticks_add(time.ticks_ms(), 120000)  # DPS answers within seconds; give up after two minutes
    while time.ticks_diff(deadline, time.ticks_ms()) > 0:
        status, q, doc = _answer(c, rid, timeout)
        if status in (200, 202) and isinstance(doc, dict):
            state = doc.get("registrationState") or {}
            if doc.get("status") == "assigned" and status == 200:
                hub, device = state.get("assignedHub"), state.get("deviceId")
                if isinstance(hub, str) and isinstance(device, str):
                    log("registered with DPS: %s on %s (%s)" % (device, hub, state.get("substatus", "initialAssignment")))
                    return hub, device
                raise Failure("wait", "DPS said assigned without a hub and device id")
            if doc.get("status") in ("failed", "disabled"):
                raise Failure("wait", "DPS registration %s: %s" % (doc.get("status"), state.get("errorMessage", "")))
            op = doc.get("operationId")
            if not isinstance(op, str) or len(op) > 256:
                raise Failure("wait", "DPS answered %d without an operation id" % status)
            wait = q.get("retry-after", "3")
            wait = int(wait) if wait.isdigit() else 3
            time.sleep(min(max(wait, 1), 30))
            rid += 1
            c.publish("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=%d&operationId=%s"
                      % (rid, topics.quote(op)), b"")
            continue
        what = _STATUS.get(status, "status %d" % status)
        detail = doc.get("message") if isinstance(doc, dict) else None
        raise Failure("wait", "DPS refused the registration: %s%s" % (what, (" (%s)" % detail) if detail else ""))
    raise Failure("wait", "DPS did not assign a hub within two minutes")


def _answer(c, rid, timeout):
    # The next answer to request rid: (status, query dict, JSON body or None).
    end = time.ticks_add(time.ticks_ms(), timeout * 1000)
    while time.ticks_diff(end, time.ticks_ms()) > 0:
        first = c.poll(1000)
        if first is None:
            continue
        p = c.read(first, "")
        if p[0] != 0x30:
            continue
        try:
            t = bytes(p[1]).decode()
        except UnicodeError:
            continue
        if not t.startswith(RES) or p[3] is None:
            continue
        rest = t[len(RES):]
        i = rest.find("/")
        q = topics.parse_bag(rest[i + 1:]) if i > 0 else {}
        if q.get("$rid") != str(rid) or not rest[:i].isdigit():
            continue
        try:
            doc = json.loads(p[3]) if p[3] else None
        except ValueError:
            doc = None
        return int(rest[:i]), q, doc
    raise OSError(110, "DPS did not answer within %d s" % timeout)


def _save(root, scope, reg, hub, device):
    # Written whole to a temporary file and renamed into place: a power cut leaves the old one or the new.
    import binascii
    import hashlib
    import os

    from iothub.config import ASSIGNMENT

    line = json.dumps({"id_scope": scope, "registration_id": reg, "hub": hub, "device_id": device}).encode()
    path = root + "/" + ASSIGNMENT
    with open(path + ".tmp", "wb") as f:
        f.write(line + b"\n" + binascii.hexlify(hashlib.sha256(line).digest()) + b"\n")
        f.flush()
    try:
        os.rename(path + ".tmp", path)
    except OSError:  # FAT does not rename over a file: a cut in between means registering once more
        os.remove(path)
        os.rename(path + ".tmp", path)


def forget(root):
    # The hub no longer takes this device (or the cloud asked): the next connection registers again.
    import os

    from iothub.config import ASSIGNMENT

    try:
        os.remove(root + "/" + ASSIGNMENT)
    except OSError:
        pass
