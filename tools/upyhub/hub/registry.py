"""The hub's state in SQLite (DATA/hub.db): identity registry, access policies, twins, C2D queue, telemetry.

One file shared by the serving process and the CLI (WAL mode), so `upyhub hub device add` while the hub
runs takes effect at the device's next CONNECT. Every method validates its input and raises UsageError
(messages never contain keys).
"""
import base64
import json
import pathlib
import re
import sqlite3
import time
import uuid

from upyhub import sas
from upyhub.errors import UsageError

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS devices (
  id TEXT PRIMARY KEY, status TEXT NOT NULL, auth TEXT NOT NULL,
  primary_key TEXT, secondary_key TEXT, primary_thumb TEXT, secondary_thumb TEXT,
  generation TEXT NOT NULL, version INTEGER NOT NULL, connected INTEGER NOT NULL DEFAULT 0,
  last_activity REAL);
CREATE TABLE IF NOT EXISTS policies (name TEXT PRIMARY KEY, rights TEXT NOT NULL,
  primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS twins (id TEXT PRIMARY KEY, desired TEXT NOT NULL, desired_version INTEGER NOT NULL,
  reported TEXT NOT NULL, reported_version INTEGER NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS c2d (seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,
  body BLOB NOT NULL, properties TEXT NOT NULL, enqueued REAL NOT NULL);
CREATE TABLE IF NOT EXISTS telemetry (seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,
  body BLOB NOT NULL, properties TEXT NOT NULL, enqueued REAL NOT NULL);
"""


def etag(version):
    return '"%s"' % base64.b64encode(str(version).encode()).decode()


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


class Conflict(Exception):
    """The device already exists (HTTP 409)."""


class Registry:
    def __init__(self, data_dir):
        self.data_dir = pathlib.Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.data_dir / "hub.db", timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
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
            raise UsageError("no device %r in the registry" % device_id)
        return row

    def list_devices(self):
        return [dict(r) for r in self.db.execute("SELECT * FROM devices ORDER BY id")]

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
            if row is None:
                self.db.execute("INSERT INTO devices (id,status,auth,primary_key,secondary_key,primary_thumb,"
                                "secondary_thumb,generation,version) VALUES (?,?,?,?,?,?,?,?,1)",
                                (device_id, status, auth, primary_key, secondary_key, primary_thumb,
                                 secondary_thumb, str(uuid.uuid4().int % 10**18)))
                self.db.execute("INSERT OR REPLACE INTO twins VALUES (?,?,1,?,1,1)", (device_id, "{}", "{}"))
            else:
                if create_only or if_match is None:
                    raise Conflict(device_id)
                if if_match != "*" and if_match != etag(row["version"]):
                    raise PreconditionFailed(device_id)
                self.db.execute("UPDATE devices SET status=?,auth=?,primary_key=?,secondary_key=?,primary_thumb=?,"
                                "secondary_thumb=?,version=version+1 WHERE id=?",
                                (status, auth, primary_key, secondary_key, primary_thumb, secondary_thumb, device_id))
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
            if if_match not in (None, "*") and if_match != etag(row["version"]):
                raise PreconditionFailed(device_id)
            for table, col in (("devices", "id"), ("twins", "id"), ("c2d", "device")):
                self.db.execute("DELETE FROM %s WHERE %s=?" % (table, col), (device_id,))
        return True

    def set_connected(self, device_id, connected):
        self.db.execute("UPDATE devices SET connected=?, last_activity=? WHERE id=?",
                        (1 if connected else 0, time.time(), device_id))

    def reset_connections(self):
        self.db.execute("UPDATE devices SET connected=0")

    def device_json(self, row, keys=True):
        """The device as IoT Hub's registry REST API shows it."""
        auth = {"type": row["auth"],
                "symmetricKey": {"primaryKey": row["primary_key"] if keys else None,
                                 "secondaryKey": row["secondary_key"] if keys else None},
                "x509Thumbprint": {"primaryThumbprint": row["primary_thumb"],
                                   "secondaryThumbprint": row["secondary_thumb"]}}
        pending = self.db.execute("SELECT COUNT(*) FROM c2d WHERE device=?", (row["id"],)).fetchone()[0]
        return {"deviceId": row["id"], "generationId": row["generation"], "etag": etag(row["version"]),
                "status": row["status"], "statusReason": None,
                "connectionState": "Connected" if row["connected"] else "Disconnected",
                "lastActivityTime": iso(row["last_activity"]), "cloudToDeviceMessageCount": pending,
                "authentication": auth}

    # --- policies ---
    def list_policies(self):
        return [dict(r, rights=r["rights"].split(",")) for r in self.db.execute("SELECT * FROM policies ORDER BY name")]

    def get_policy(self, name):
        row = self.db.execute("SELECT * FROM policies WHERE name=?", (name,)).fetchone()
        return dict(row, rights=row["rights"].split(",")) if row else None

    def connection_string(self, hostname, policy):
        p = self.get_policy(policy)
        if p is None:
            raise UsageError("no shared access policy %r (see `upyhub hub policy list`)" % policy)
        return "HostName=%s;SharedAccessKeyName=%s;SharedAccessKey=%s" % (hostname, p["name"], p["primary_key"])

    # --- twins ---
    def get_twin(self, device_id):
        row = self.db.execute("SELECT * FROM twins WHERE id=?", (device_id,)).fetchone()
        if row is None:
            return None
        desired = json.loads(row["desired"])
        reported = json.loads(row["reported"])
        return {"deviceId": device_id, "etag": etag(row["version"]), "version": row["version"],
                "properties": {"desired": dict(desired, **{"$version": row["desired_version"]}),
                               "reported": dict(reported, **{"$version": row["reported_version"]})}}

    def _patch_twin(self, device_id, side, patch, if_match=None):
        if not isinstance(patch, dict):
            raise UsageError("a twin patch is a JSON object")
        patch = {k: v for k, v in patch.items() if not k.startswith("$")}
        with self.tx():
            row = self.db.execute("SELECT * FROM twins WHERE id=?", (device_id,)).fetchone()
            if row is None:
                return None
            if if_match not in (None, "*") and if_match != etag(row["version"]):
                raise PreconditionFailed(device_id)
            doc = merge(json.loads(row[side]), patch)
            self.db.execute("UPDATE twins SET %s=?, %s_version=%s_version+1, version=version+1 WHERE id=?"
                            % (side, side, side), (json.dumps(doc), device_id))
            return self.db.execute("SELECT %s_version FROM twins WHERE id=?" % side, (device_id,)).fetchone()[0]

    def patch_desired(self, device_id, patch, if_match=None):
        """Apply a desired patch; returns the new desired $version (None: no such twin)."""
        return self._patch_twin(device_id, "desired", patch, if_match)

    def patch_reported(self, device_id, patch):
        return self._patch_twin(device_id, "reported", patch)

    # --- cloud-to-device queue ---
    def enqueue_c2d(self, device_id, body, properties):
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
        return [{"deviceId": r["device"], "body": r["body"].decode("utf-8", "replace"),
                 "properties": json.loads(r["properties"]), "enqueuedTime": iso(r["enqueued"]), "seq": r["seq"]}
                for r in rows]


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
