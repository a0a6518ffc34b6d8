"""The hub's state in SQLite (DATA/hub.db): identity registry, access policies, twins, C2D queue, telemetry.

One file shared by the serving process and the CLI (WAL mode), so `upyhub hub device add` while the hub
runs takes effect at the device's next CONNECT. Every method validates its input and raises UsageError
(messages never contain keys).
"""
import base64
import json
import os
import pathlib
import re
import sqlite3
import time
import uuid

from upyhub import sas
from upyhub.errors import UsageError
from upyhub.hub import HubError

PERMISSIONS = ("RegistryRead", "RegistryReadWrite", "ServiceConnect", "DeviceConnect")
DEFAULT_POLICIES = {
    "iothubowner": PERMISSIONS,
    "service": ("ServiceConnect",),
    "device": ("DeviceConnect",),
    "registryRead": ("RegistryRead",),
    "registryReadWrite": ("RegistryRead", "RegistryReadWrite"),
}
AUTH_TYPES = ("sas", "selfSigned", "certificateAuthority")
STATUSES = ("enabled", "disabled")
THUMB_RE = re.compile(r"^([0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})$")
TELEMETRY_KEEP = 10000  # per hub; old messages are dropped first (a test/dev hub, not an event store)
C2D_QUEUE_MAX = 50  # IoT Hub's per-device cloud-to-device queue depth (403004 beyond)
TWIN_LIMITS = {"tags": 8 * 1024, "desired": 32 * 1024, "reported": 32 * 1024}  # bytes of each section's JSON
TWIN_DEPTH = 10  # levels of nested objects below a section (IoT Hub's limit)
# columns added after the first release: added to an existing hub.db when it is opened
MIGRATIONS = (("devices", "status_updated", "REAL"), ("devices", "state_updated", "REAL"),
              ("twins", "tags", "TEXT NOT NULL DEFAULT '{}'"), ("twins", "desired_updated", "REAL"),
              ("twins", "reported_updated", "REAL"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS devices (
  id TEXT PRIMARY KEY, status TEXT NOT NULL, auth TEXT NOT NULL,
  primary_key TEXT, secondary_key TEXT, primary_thumb TEXT, secondary_thumb TEXT,
  generation TEXT NOT NULL, version INTEGER NOT NULL, connected INTEGER NOT NULL DEFAULT 0,
  last_activity REAL, status_updated REAL, state_updated REAL);
CREATE TABLE IF NOT EXISTS policies (name TEXT PRIMARY KEY, rights TEXT NOT NULL,
  primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS twins (id TEXT PRIMARY KEY, desired TEXT NOT NULL, desired_version INTEGER NOT NULL,
  reported TEXT NOT NULL, reported_version INTEGER NOT NULL, version INTEGER NOT NULL,
  tags TEXT NOT NULL DEFAULT '{}', desired_updated REAL, reported_updated REAL);
CREATE TABLE IF NOT EXISTS c2d (seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,
  body BLOB NOT NULL, properties TEXT NOT NULL, enqueued REAL NOT NULL);
CREATE TABLE IF NOT EXISTS telemetry (seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,
  body BLOB NOT NULL, properties TEXT NOT NULL, enqueued REAL NOT NULL);
"""


def etag(version):
    """An etag as IoT Hub's JSON shows it (no quotes inside the string; HTTP headers quote it)."""
    return base64.b64encode(str(version).encode()).decode()


def etag_matches(if_match, version):
    """If-Match against the current version: absent or `*` (quoted or bare) is any; W/ and quotes ignored."""
    if if_match is None:
        return True
    value = if_match.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value == "*" or value == etag(version)


def iso(t):
    if t is None:
        return "0001-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)


def merge(target, patch):
    """JSON merge patch (RFC 7396), the way twin patches apply: null deletes."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        elif isinstance(v, dict):
            target[k] = merge({}, v)
        else:
            target[k] = v
    return target


class PreconditionFailed(Exception):
    """The If-Match etag does not match (HTTP 412)."""


class QueueFull(Exception):
    """The device's cloud-to-device queue holds C2D_QUEUE_MAX messages (HTTP 403, 403004)."""


class TooLarge(UsageError):
    """A twin section over IoT Hub's size or depth limit (HTTP 400)."""


def json_depth(value):
    """Levels of objects/arrays nested below `value` (a flat object is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        for c in children:
            if isinstance(c, (dict, list)):
                deepest = max(deepest, d + 1)
                stack.append((c, d + 1))
    return deepest


def check_twin_section(name, doc):
    """IoT Hub's twin limits on one section (tags, desired, reported): depth and JSON size."""
    if json_depth(doc) > TWIN_DEPTH:
        raise TooLarge("twin %s is nested more than %d levels deep" % (name, TWIN_DEPTH))
    size = len(json.dumps(doc, separators=(",", ":")).encode())
    if size > TWIN_LIMITS[name]:
        raise TooLarge("twin %s would be %d bytes (limit %d)" % (name, size, TWIN_LIMITS[name]))


class Conflict(Exception):
    """The device already exists (HTTP 409)."""


def private_dir(path):
    """Create `path` (and parents) and make it owner-only: it holds every device and policy key."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_uid == os.getuid():
        os.chmod(path, 0o700)


class Registry:
    def __init__(self, data_dir):
        self.data_dir = pathlib.Path(data_dir)
        private_dir(self.data_dir)
        db_path = self.data_dir / "hub.db"
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite gives -wal/-shm the db's mode
        self.db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        for table, column, decl in MIGRATIONS:
            if column not in {r[1] for r in self.db.execute("PRAGMA table_info(%s)" % table)}:
                self.db.execute("ALTER TABLE %s ADD COLUMN %s %s" % (table, column, decl))
        for p in self.data_dir.glob("hub.db*"):  # every key is in here: owner only, whatever made them
            os.chmod(p, 0o600)
        with self.tx():
            for name, rights in DEFAULT_POLICIES.items():
                self.db.execute("INSERT OR IGNORE INTO policies VALUES (?,?,?,?)",
                                (name, ",".join(rights), sas.new_key(), sas.new_key()))

    def close(self):
        self.db.close()

    def tx(self):
        return _Tx(self.db)

    # --- devices ---
    def _row(self, device_id):
        return self.db.execute("SELECT * FROM devices WHERE id=?", (device_id,)).fetchone()

    def get_device(self, device_id):
        row = self._row(device_id)
        return dict(row) if row else None

    def require_device(self, device_id):
        row = self.get_device(device_id)
        if row is None:
            raise HubError("no device %r in the registry" % device_id)
        return row

    def list_devices(self, top=None):
        """Devices by id; at most `top` of them (IoT Hub: 1..1000, anything else means 1000)."""
        if top is not None and not 1 <= top <= 1000:
            top = 1000
        q = "SELECT * FROM devices ORDER BY id" + (" LIMIT %d" % top if top else "")
        return [dict(r) for r in self.db.execute(q)]

    def count_devices(self):
        return self.db.execute("SELECT COUNT(*) FROM devices").fetchone()[0]

    @staticmethod
    def _check_fields(auth, status, primary_key, secondary_key, primary_thumb, secondary_thumb):
        if auth not in AUTH_TYPES:
            raise UsageError("authentication type must be one of %s" % ", ".join(AUTH_TYPES))
        if status not in STATUSES:
            raise UsageError("status must be enabled or disabled")
        if auth == "sas":
            sas.decode_key(primary_key, "primary key")
            sas.decode_key(secondary_key, "secondary key")
        if auth == "selfSigned":
            if not primary_thumb:
                raise UsageError("a selfSigned device needs a primary thumbprint")
            for t in (primary_thumb, secondary_thumb):
                if t and not THUMB_RE.match(t):
                    raise UsageError("a thumbprint is 40 (SHA-1) or 64 (SHA-256) hex digits")

    def put_device(self, device_id, *, auth="sas", status="enabled", primary_key=None, secondary_key=None,
                   primary_thumb=None, secondary_thumb=None, if_match=None, create_only=False):
        """Create or update (with if_match "*" or the current etag) a device; returns the row."""
        sas.check_device_id(device_id)
        if auth == "sas":
            primary_key = primary_key or sas.new_key()
            secondary_key = secondary_key or sas.new_key()
        else:
            primary_key = secondary_key = None
        if auth != "selfSigned":
            primary_thumb = secondary_thumb = None
        primary_thumb = primary_thumb.upper() if primary_thumb else None
        secondary_thumb = secondary_thumb.upper() if secondary_thumb else None
        self._check_fields(auth, status, primary_key, secondary_key, primary_thumb, secondary_thumb)
        with self.tx():
            row = self._row(device_id)
            now = time.time()
            if row is None:
                self.db.execute("INSERT INTO devices (id,status,auth,primary_key,secondary_key,primary_thumb,"
                                "secondary_thumb,generation,version,status_updated) VALUES (?,?,?,?,?,?,?,?,1,?)",
                                (device_id, status, auth, primary_key, secondary_key, primary_thumb,
                                 secondary_thumb, str(uuid.uuid4().int % 10**18), now))
                self.db.execute("INSERT OR REPLACE INTO twins (id,desired,desired_version,reported,reported_version,"
                                "version,tags) VALUES (?,'{}',1,'{}',1,1,'{}')", (device_id,))
            else:
                if create_only or if_match is None:
                    raise Conflict(device_id)
                if not etag_matches(if_match, row["version"]):
                    raise PreconditionFailed(device_id)
                self.db.execute("UPDATE devices SET status=?,auth=?,primary_key=?,secondary_key=?,primary_thumb=?,"
                                "secondary_thumb=?,version=version+1,status_updated=? WHERE id=?",
                                (status, auth, primary_key, secondary_key, primary_thumb, secondary_thumb,
                                 now if status != row["status"] else row["status_updated"], device_id))
        return self.get_device(device_id)

    def set_status(self, device_id, status):
        row = self.require_device(device_id)
        return self.put_device(device_id, auth=row["auth"], status=status, primary_key=row["primary_key"],
                               secondary_key=row["secondary_key"], primary_thumb=row["primary_thumb"],
                               secondary_thumb=row["secondary_thumb"], if_match="*")

    def regenerate_key(self, device_id, which):
        row = self.require_device(device_id)
        if row["auth"] != "sas":
            raise UsageError("device %r does not use SAS keys" % device_id)
        keys = {"primary": row["primary_key"], "secondary": row["secondary_key"]}
        if which not in keys:
            raise UsageError("key must be primary or secondary")
        keys[which] = sas.new_key()
        return self.put_device(device_id, auth="sas", status=row["status"], primary_key=keys["primary"],
                               secondary_key=keys["secondary"], if_match="*")

    def delete_device(self, device_id, if_match=None):
        with self.tx():
            row = self._row(device_id)
            if row is None:
                return False
            if not etag_matches(if_match, row["version"]):
                raise PreconditionFailed(device_id)
            for table, col in (("devices", "id"), ("twins", "id"), ("c2d", "device")):
                self.db.execute("DELETE FROM %s WHERE %s=?" % (table, col), (device_id,))
        return True

    def set_connected(self, device_id, connected):
        now = time.time()
        self.db.execute("UPDATE devices SET connected=?, last_activity=?, state_updated=? WHERE id=?",
                        (1 if connected else 0, now, now, device_id))

    def reset_connections(self):
        self.db.execute("UPDATE devices SET connected=0")

    def _pending_c2d(self, device_id):
        return self.db.execute("SELECT COUNT(*) FROM c2d WHERE device=?", (device_id,)).fetchone()[0]

    def device_json(self, row, keys=True):
        """The device as IoT Hub's registry REST API shows it."""
        auth = {"type": row["auth"],
                "symmetricKey": {"primaryKey": row["primary_key"] if keys else None,
                                 "secondaryKey": row["secondary_key"] if keys else None},
                "x509Thumbprint": {"primaryThumbprint": row["primary_thumb"],
                                   "secondaryThumbprint": row["secondary_thumb"]}}
        return {"deviceId": row["id"], "generationId": row["generation"], "etag": etag(row["version"]),
                "connectionState": "Connected" if row["connected"] else "Disconnected",
                "status": row["status"], "statusReason": None,
                "connectionStateUpdatedTime": iso(row["state_updated"]),
                "statusUpdatedTime": iso(row["status_updated"]),
                "lastActivityTime": iso(row["last_activity"]),
                "cloudToDeviceMessageCount": self._pending_c2d(row["id"]),
                "authentication": auth, "capabilities": {"iotEdge": False}}

    def statistics(self):
        """IoT Hub's /statistics/devices and /statistics/service figures."""
        total, enabled, connected = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(status='enabled'),0), COALESCE(SUM(connected),0) FROM devices").fetchone()
        return {"totalDeviceCount": total, "enabledDeviceCount": enabled, "disabledDeviceCount": total - enabled,
                "connectedDeviceCount": connected}

    # --- policies ---
    def list_policies(self):
        return [dict(r, rights=r["rights"].split(",")) for r in self.db.execute("SELECT * FROM policies ORDER BY name")]

    def get_policy(self, name):
        row = self.db.execute("SELECT * FROM policies WHERE name=?", (name,)).fetchone()
        return dict(row, rights=row["rights"].split(",")) if row else None

    def connection_string(self, hostname, policy):
        p = self.get_policy(policy)
        if p is None:
            raise HubError("no shared access policy %r (see `upyhub hub policy list`)" % policy)
        return "HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s" % (hostname, p["name"], p["primary_key"])

    # --- twins ---
    def _twin_row(self, device_id):
        return self.db.execute("SELECT * FROM twins WHERE id=?", (device_id,)).fetchone()

    def get_twin(self, device_id):
        """The twin's properties as a device sees them (MQTT twin GET): desired and reported with $version."""
        row = self._twin_row(device_id)
        if row is None:
            return None
        return {"desired": dict(json.loads(row["desired"]), **{"$version": row["desired_version"]}),
                "reported": dict(json.loads(row["reported"]), **{"$version": row["reported_version"]})}

    def twin_json(self, device_id):
        """The twin as IoT Hub's service API shows it (GET /twins/{id}); None when there is no such device."""
        row, dev = self._twin_row(device_id), self._row(device_id)
        if row is None or dev is None:
            return None

        def section(name):
            doc = json.loads(row[name])
            meta = {"$lastUpdated": iso(row[name + "_updated"] or dev["status_updated"])}
            if name == "desired":
                meta["$lastUpdatedVersion"] = row["desired_version"]
            return dict(doc, **{"$metadata": meta, "$version": row[name + "_version"]})

        return {"deviceId": device_id, "etag": etag(row["version"]), "deviceEtag": etag(dev["version"]),
                "status": dev["status"], "statusReason": None, "statusUpdateTime": iso(dev["status_updated"]),
                "connectionState": "Connected" if dev["connected"] else "Disconnected",
                "lastActivityTime": iso(dev["last_activity"]),
                "cloudToDeviceMessageCount": self._pending_c2d(device_id),
                "authenticationType": dev["auth"],
                "x509Thumbprint": {"primaryThumbprint": dev["primary_thumb"],
                                   "secondaryThumbprint": dev["secondary_thumb"]},
                "modelId": "", "version": row["version"], "tags": json.loads(row["tags"]),
                "properties": {"desired": section("desired"), "reported": section("reported")},
                "capabilities": {"iotEdge": False}}

    def update_twin(self, device_id, *, tags=None, desired=None, reported=None, replace=False, if_match=None):
        """Patch (JSON merge) or, with replace, set the given sections in one transaction.

        Returns the new desired $version when desired changed (else None); raises LookupError for an
        unknown device, PreconditionFailed, TooLarge (size/depth) or UsageError (not an object)."""
        sections = {k: v for k, v in (("tags", tags), ("desired", desired), ("reported", reported)) if v is not None}
        for name, patch in sections.items():
            if not isinstance(patch, dict):
                raise UsageError("twin %s must be a JSON object" % name)
        with self.tx():
            row = self._twin_row(device_id)
            if row is None:
                raise LookupError(device_id)
            if not etag_matches(if_match, row["version"]):
                raise PreconditionFailed(device_id)
            now, sets, args = time.time(), [], []
            for name, patch in sections.items():
                patch = {k: v for k, v in patch.items() if not k.startswith("$")}
                doc = merge({}, patch) if replace else merge(json.loads(row[name]), patch)
                check_twin_section(name, doc)
                sets.append("%s=?" % name)
                args.append(json.dumps(doc))
                if name != "tags":
                    sets.append("%s_version=%s_version+1, %s_updated=?" % (name, name, name))
                    args.append(now)
            if not sets:
                return None
            self.db.execute("UPDATE twins SET %s, version=version+1 WHERE id=?" % ", ".join(sets),
                            args + [device_id])
            if "desired" in sections:
                return self.db.execute("SELECT desired_version FROM twins WHERE id=?", (device_id,)).fetchone()[0]
            if "reported" in sections:
                return self.db.execute("SELECT reported_version FROM twins WHERE id=?", (device_id,)).fetchone()[0]
            return None

    def patch_reported(self, device_id, patch):
        """A device's reported patch; returns the new reported $version (None: the device is gone)."""
        try:
            return self.update_twin(device_id, reported=patch)
        except LookupError:
            return None

    # --- cloud-to-device queue ---
    def enqueue_c2d(self, device_id, body, properties):
        """Queue a message for the device; QueueFull when C2D_QUEUE_MAX are already waiting."""
        with self.tx():
            if self._pending_c2d(device_id) >= C2D_QUEUE_MAX:
                raise QueueFull(device_id)
            cur = self.db.execute("INSERT INTO c2d (device, body, properties, enqueued) VALUES (?,?,?,?)",
                                  (device_id, body, json.dumps(properties), time.time()))
        return cur.lastrowid

    def pending_c2d(self, device_id):
        return [dict(r, properties=json.loads(r["properties"]))
                for r in self.db.execute("SELECT * FROM c2d WHERE device=? ORDER BY seq", (device_id,))]

    def complete_c2d(self, seq):
        self.db.execute("DELETE FROM c2d WHERE seq=?", (seq,))

    # --- telemetry ---
    def add_telemetry(self, device_id, body, properties):
        with self.tx():
            cur = self.db.execute("INSERT INTO telemetry (device, body, properties, enqueued) VALUES (?,?,?,?)",
                                  (device_id, body, json.dumps(properties), time.time()))
            self.db.execute("DELETE FROM telemetry WHERE seq <= ?", (cur.lastrowid - TELEMETRY_KEEP,))
        return cur.lastrowid

    def telemetry(self, device_id=None, since=0, limit=1000):
        q, args = "SELECT * FROM telemetry WHERE seq > ?", [since or 0]
        if device_id:
            q += " AND device=?"
            args.append(device_id)
        rows = self.db.execute(q + " ORDER BY seq LIMIT ?", args + [limit])
        out = []
        for r in rows:
            props = json.loads(r["properties"])
            out.append({"deviceId": r["device"], "messageId": props.get("$.mid"), "body": r["body"].decode("utf-8", "replace"),
                        "properties": props, "enqueuedTime": iso(r["enqueued"]), "seq": r["seq"]})
        return out


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT: one writer at a time across the serving process and the CLI."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *exc):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
