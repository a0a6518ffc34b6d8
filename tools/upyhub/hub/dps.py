"""The local Device Provisioning Service (DPS): ID scope, enrollments, attestation, assignment.

State lives in DATA/hub.db next to the hub's registry (tables dps_enrollments, dps_registrations; the ID
scope in meta), so `upyhub hub dps ...` while the hub serves takes effect at the next registration.
The MQTT side (topics, operations, 202/200) is dps_endpoint.py.

Attestation, as Azure's DPS does it:
- symmetric key: the registration's SAS token (`sr={idScope}/registrations/{registrationId}`,
  `skn=registration`, or no skn as the Python device SDK sends it) is signed by the individual enrollment's primary or secondary key, or (no individual
  enrollment) by the key derived from a symmetric-key group's primary or secondary key:
  base64(HMAC-SHA256(base64decode(groupKey), registrationId)).
- X.509: the client certificate's CN is the registration id; an individual enrollment matches its SHA-1 or
  SHA-256 thumbprint, a group its chain (intermediates sent by the device) to the group's CA certificate.
- An individual enrollment wins over groups: a disabled individual enrollment blocks that device even
  when its group credential is right (Azure's way to disallow one device of a group).
Assignment creates or updates the device in the hub's registry with the credential DPS checked:
symmetric key -> a SAS device with the enrollment's (or derived) keys; X.509 individual -> selfSigned
with the enrolled thumbprints; X.509 group -> certificateAuthority (the group's CA is registered with
the hub when the group is created). A device that exists keeps its status (a device disabled in the hub
stays disabled).

Library functions for provisioning tools (each opens and closes DATA/hub.db): id_scope(),
endpoint(), create_enrollment(), create_enrollment_group(), get_enrollment(), get_enrollment_group().
Errors are UsageError (bad input), HubError (state: exists, not found), DpsError (a registration refused,
with DPS's status code). Messages never contain keys.
"""
import contextlib
import json
import os
import pathlib
import re
import time

from cryptography import x509

from upyhub import sas
from upyhub.errors import UsageError
from upyhub.hub import HubError, auth, pki as pki_mod, registry as reg_mod

DEFAULT_PORT = 8884  # this hub's DPS port; Azure's (and the official SDK's) is 8883 on its own hostname
API_VERSION = "2019-03-31"
ATTESTATIONS = ("symmetricKey", "x509")
KINDS = ("individual", "group")
GROUP_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{0,127}[A-Za-z0-9-]$")
MAX_PAYLOAD = 8 * 1024  # bytes of the device's `payload` JSON kept with its registration

SCHEMA = """
CREATE TABLE IF NOT EXISTS dps_enrollments (
  kind TEXT NOT NULL, id TEXT NOT NULL COLLATE NOCASE, attestation TEXT NOT NULL, status TEXT NOT NULL,
  primary_key TEXT, secondary_key TEXT, primary_thumb TEXT, secondary_thumb TEXT, ca_pem TEXT,
  device_id TEXT, version INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
  PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS dps_registrations (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, enrollment TEXT NOT NULL, attestation TEXT NOT NULL,
  device_id TEXT NOT NULL, assigned_hub TEXT NOT NULL, status TEXT NOT NULL, substatus TEXT NOT NULL,
  payload TEXT, version INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
"""


class DpsError(Exception):
    """A registration request refused: DPS's HTTP-like status, error code and a one-line reason."""

    NAMES = {400: (400004, "BadRequest"), 401: (401002, "Unauthorized"), 403: (403001, "Forbidden"),
             404: (404201, "NotFound"), 429: (429001, "ThrottlingException")}

    def __init__(self, status, reason, retry_after=None):
        super().__init__(reason)
        self.status, self.reason, self.retry_after = status, reason, retry_after
        self.code, self.name = self.NAMES[status]

    def body(self, tracking_id):
        """Azure's error JSON for the device."""
        return {"errorCode": self.code, "trackingId": tracking_id, "message": "%s: %s" % (self.name, self.reason),
                "timestampUtc": reg_mod.iso(time.time())}


def new_id_scope():
    """An ID scope in Azure's form: `0ne` and 8 hex digits."""
    return "0ne" + os.urandom(4).hex().upper()


def check_group_id(group_id):
    if not isinstance(group_id, str) or not GROUP_ID_RE.match(group_id):
        raise UsageError("an enrollment group id is 1..128 letters, digits or - . _ : ending in a letter, "
                         "digit or -")
    return group_id


def _certs_pem(certs):
    return b"".join(pki_mod.cert_pem(c) for c in certs).decode()


def _load_certs(pem):
    return x509.load_pem_x509_certificates(pem.encode()) if pem else []


def _cert_info(cert):
    sha1, sha256 = pki_mod.thumbprints(pki_mod.der(cert))
    return {"info": {"subjectName": cert.subject.rfc4514_string(), "issuerName": cert.issuer.rfc4514_string(),
                     "sha1Thumbprint": sha1, "sha256Thumbprint": sha256,
                     "notBeforeUtc": reg_mod.iso(cert.not_valid_before_utc.timestamp()),
                     "notAfterUtc": reg_mod.iso(cert.not_valid_after_utc.timestamp())}}


class Store:
    """The DPS tables in a hub registry's database (registry.Registry)."""

    def __init__(self, registry):
        self.registry = registry
        self.db = registry.db
        self.db.executescript(SCHEMA)

    def id_scope(self):
        """This DPS's ID scope, made on first use and fixed from then on."""
        row = self.db.execute("SELECT value FROM meta WHERE name='dps_id_scope'").fetchone()
        if row:
            return row[0]
        with self.registry.tx():
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('dps_id_scope', ?)", (new_id_scope(),))
        return self.db.execute("SELECT value FROM meta WHERE name='dps_id_scope'").fetchone()[0]

    # --- enrollments ---
    @staticmethod
    def _check_id(kind, enrollment_id):
        if kind not in KINDS:
            raise UsageError("enrollment kind must be individual or group")
        return sas.check_registration_id(enrollment_id) if kind == "individual" else check_group_id(enrollment_id)

    def put_enrollment(self, kind, enrollment_id, *, attestation="symmetricKey", status="enabled",
                       primary_key=None, secondary_key=None, primary_thumb=None, secondary_thumb=None,
                       ca_certs=(), device_id=None):
        """Create an enrollment (HubError when it exists); keys default to 32 random bytes each."""
        self._check_id(kind, enrollment_id)
        if attestation not in ATTESTATIONS:
            raise UsageError("attestation must be symmetricKey or x509")
        if status not in reg_mod.STATUSES:
            raise UsageError("status must be enabled or disabled")
        if device_id is not None and kind == "group":
            raise UsageError("a device id is for individual enrollments (a group's devices are their "
                             "registration ids)")
        if device_id is not None:
            sas.check_device_id(device_id)
        ca_pem = None
        if attestation == "symmetricKey":
            if primary_thumb or secondary_thumb or ca_certs:
                raise UsageError("thumbprints and CA certificates are for x509 attestation")
            primary_key, secondary_key = primary_key or sas.new_key(), secondary_key or sas.new_key()
            sas.decode_key(primary_key, "primary key")
            sas.decode_key(secondary_key, "secondary key")
        else:
            if primary_key or secondary_key:
                raise UsageError("keys are for symmetricKey attestation")
            if kind == "individual":
                if ca_certs:
                    raise UsageError("an individual x509 enrollment is the device certificate's thumbprint, "
                                     "not a CA")
                if not primary_thumb:
                    raise UsageError("an individual x509 enrollment needs a primary thumbprint (or the device "
                                     "certificate)")
                primary_thumb, secondary_thumb = [t.upper() if t else None for t in (primary_thumb, secondary_thumb)]
                for t in (primary_thumb, secondary_thumb):
                    if t and not reg_mod.THUMB_RE.match(t):
                        raise UsageError("a thumbprint is 40 (SHA-1) or 64 (SHA-256) hex digits")
            else:
                if primary_thumb or secondary_thumb:
                    raise UsageError("an x509 enrollment group is a CA certificate, not thumbprints")
                if not 1 <= len(ca_certs) <= 2 or not all(pki_mod.is_ca(c) for c in ca_certs):
                    raise UsageError("an x509 enrollment group needs one or two CA certificates "
                                     "(basicConstraints CA:TRUE)")
                ca_pem = _certs_pem(ca_certs)
        now = time.time()
        with self.registry.tx():
            if self._get(kind, enrollment_id):
                raise HubError("%s enrollment %r already exists" % (_kind_name(kind), enrollment_id))
            self.db.execute("INSERT INTO dps_enrollments VALUES (?,?,?,?,?,?,?,?,?,?,1,?,?)",
                            (kind, enrollment_id, attestation, status, primary_key, secondary_key, primary_thumb,
                             secondary_thumb, ca_pem, device_id, now, now))
        return self._get(kind, enrollment_id)

    def _get(self, kind, enrollment_id):
        row = self.db.execute("SELECT * FROM dps_enrollments WHERE kind=? AND id=?", (kind, enrollment_id)).fetchone()
        return dict(row) if row else None

    def get_enrollment(self, kind, enrollment_id):
        return self._get(kind, enrollment_id)

    def require_enrollment(self, kind, enrollment_id):
        row = self._get(kind, enrollment_id)
        if row is None:
            raise HubError("no %s enrollment %r" % (_kind_name(kind), enrollment_id))
        return row

    def list_enrollments(self, kind):
        return [dict(r) for r in self.db.execute("SELECT * FROM dps_enrollments WHERE kind=? ORDER BY id", (kind,))]

    def set_enrollment_status(self, kind, enrollment_id, status):
        if status not in reg_mod.STATUSES:
            raise UsageError("status must be enabled or disabled")
        with self.registry.tx():
            cur = self.db.execute("UPDATE dps_enrollments SET status=?, version=version+1, updated=? "
                                  "WHERE kind=? AND id=?", (status, time.time(), kind, enrollment_id))
        if not cur.rowcount:
            raise HubError("no %s enrollment %r" % (_kind_name(kind), enrollment_id))

    def delete_enrollment(self, kind, enrollment_id):
        """Remove an enrollment (its registrations and hub devices stay, as on Azure)."""
        with self.registry.tx():
            cur = self.db.execute("DELETE FROM dps_enrollments WHERE kind=? AND id=?", (kind, enrollment_id))
        if not cur.rowcount:
            raise HubError("no %s enrollment %r" % (_kind_name(kind), enrollment_id))

    def enrollment_json(self, row, keys=False):
        """An enrollment as DPS's service API shows it (keys only when asked)."""
        doc = {"registrationId" if row["kind"] == "individual" else "enrollmentGroupId": row["id"]}
        if row["kind"] == "individual":
            doc["deviceId"] = row["device_id"] or row["id"]
        att = {"type": row["attestation"]}
        if row["attestation"] == "symmetricKey":
            att["symmetricKey"] = {"primaryKey": row["primary_key"], "secondaryKey": row["secondary_key"]} \
                if keys else {}
        elif row["kind"] == "individual":
            att["x509"] = {"clientCertificates": {
                name: {"info": {("sha1Thumbprint" if len(t) == 40 else "sha256Thumbprint"): t}}
                for name, t in (("primary", row["primary_thumb"]), ("secondary", row["secondary_thumb"])) if t}}
        else:
            cas = _load_certs(row["ca_pem"])
            att["x509"] = {"signingCertificates": {name: _cert_info(c) for name, c in zip(("primary", "secondary"),
                                                                                            cas)}}
        doc.update(attestation=att, provisioningStatus=row["status"], allocationPolicy="static",
                   iotHubs=[self.registry_hostname()], createdDateTimeUtc=reg_mod.iso(row["created"]), lastUpdatedDateTimeUtc=reg_mod.iso(row["updated"]),
                   etag=reg_mod.etag(row["version"]))
        return doc

    def registry_hostname(self):
        return pki_mod.PKI(self.registry.data_dir).hostname

    # --- registrations ---
    def get_registration(self, registration_id):
        row = self.db.execute("SELECT * FROM dps_registrations WHERE id=?", (registration_id,)).fetchone()
        return dict(row) if row else None

    def require_registration(self, registration_id):
        row = self.get_registration(registration_id)
        if row is None:
            raise HubError("no registration %r" % registration_id)
        return row

    def list_registrations(self):
        return [dict(r) for r in self.db.execute("SELECT * FROM dps_registrations ORDER BY id")]

    def delete_registration(self, registration_id):
        """Forget a registration record (the hub's device stays, as on Azure)."""
        with self.registry.tx():
            cur = self.db.execute("DELETE FROM dps_registrations WHERE id=?", (registration_id,))
        if not cur.rowcount:
            raise HubError("no registration %r" % registration_id)

    def record_registration(self, registration_id, enrollment, device_id, assigned_hub, payload):
        now = time.time()
        payload_json = json.dumps(payload)
        with self.registry.tx():
            old = self.get_registration(registration_id)
            if old is None:
                self.db.execute("INSERT INTO dps_registrations VALUES (?,?,?,?,?,?,'assigned','initialAssignment',"
                                "?,1,?,?)", (registration_id, enrollment["kind"], enrollment["id"],
                                             enrollment["attestation"], device_id, assigned_hub, payload_json,
                                             now, now))
            else:
                self.db.execute("UPDATE dps_registrations SET kind=?, enrollment=?, attestation=?, device_id=?, "
                                "assigned_hub=?, status='assigned', payload=?, version=version+1, updated=? "
                                "WHERE id=?", (enrollment["kind"], enrollment["id"], enrollment["attestation"],
                                               device_id, assigned_hub, payload_json, now, registration_id))
        return self.get_registration(registration_id)

    @staticmethod
    def registration_json(row, enrollment_fields=False):
        """The device registration state as DPS shows it (to the device, and with the enrollment to the CLI)."""
        doc = {"registrationId": row["id"], "createdDateTimeUtc": reg_mod.iso(row["created"]),
               "assignedHub": row["assigned_hub"], "deviceId": row["device_id"], "status": row["status"],
               "substatus": row["substatus"], "lastUpdatedDateTimeUtc": reg_mod.iso(row["updated"]),
               "etag": reg_mod.etag(row["version"]), "payload": json.loads(row["payload"] or "null")}
        if enrollment_fields:
            doc.update(attestation=row["attestation"],
                       enrollment={"type": row["kind"], ("registrationId" if row["kind"] == "individual"
                                                         else "enrollmentGroupId"): row["enrollment"]})
        return doc


def _kind_name(kind):
    return "individual" if kind == "individual" else "group"


# --- attestation ---
def _sas_matches(token, keys):
    return any(k and token.valid_signature(sas.decode_key(k)) for k in keys)


def _group_keys(group, registration_id):
    return [sas.derive_device_key(k, registration_id) for k in (group["primary_key"], group["secondary_key"]) if k]


def _x509_individual_matches(enrollment, der):
    thumbs = {t for t in (enrollment["primary_thumb"], enrollment["secondary_thumb"]) if t}
    return bool(thumbs & set(pki_mod.thumbprints(der)))


def _x509_group_matches(group, cert, chain):
    try:
        pki_mod.verify_chain(cert, chain, _load_certs(group["ca_pem"]))
        return True
    except ValueError:
        return False


class Attestation:
    """Who a registration request is: the credential of its connection, checked against the enrollments."""

    def __init__(self, store):
        self.store = store

    def authenticate(self, id_scope, registration_id, password, der, chain, now=None):
        """The enrollment the credential matches (enabled), or raises DpsError 401/403/404."""
        if password:
            match = self._symmetric(id_scope, registration_id, password, now)
        elif der:
            match = self._x509(registration_id, der, chain)
        else:
            raise DpsError(401, "no SAS token and no client certificate")
        if match["status"] != "enabled":
            raise DpsError(403, "%s enrollment %s is disabled" % (_kind_name(match["kind"]), match["id"]))
        return match

    def _pick(self, registration_id, attestation, matches):
        """An individual enrollment wins over groups; a disabled one blocks its device in every group."""
        individual = self.store.get_enrollment("individual", registration_id)
        groups = [g for g in self.store.list_enrollments("group") if g["attestation"] == attestation]
        if individual is not None:
            if individual["attestation"] == attestation and matches(individual):
                return individual
            if individual["status"] == "disabled" and any(matches(g) for g in groups):
                raise DpsError(403, "individual enrollment %s is disabled" % registration_id)
            raise DpsError(401, "the credential does not match individual enrollment %s (%s)"
                           % (registration_id, individual["attestation"]))
        for g in groups:
            if matches(g):
                return g
        if not groups:
            raise DpsError(404, "no enrollment for registration %s" % registration_id)
        raise DpsError(401, "the credential matches no %s enrollment group" % attestation)

    def _symmetric(self, id_scope, registration_id, password, now):
        try:
            token = auth.parse_token(password)
        except UsageError:
            raise DpsError(401, "password is not a SAS token") from None
        if token.skn not in (None, "registration"):  # the Python device SDK sends none; Azure takes both
            raise DpsError(401, "the SAS token's skn is not 'registration'")
        if token.sr.lower().rstrip("/") != ("%s/registrations/%s" % (id_scope, registration_id)).lower():
            raise DpsError(401, "the SAS token is not for %s/registrations/%s" % (id_scope, registration_id))
        if token.expired(now):
            raise DpsError(401, "the SAS token expired")

        def matches(e):
            if e["kind"] == "individual":
                return _sas_matches(token, (e["primary_key"], e["secondary_key"]))
            return _sas_matches(token, _group_keys(e, registration_id))
        return self._pick(registration_id, "symmetricKey", matches)

    def _x509(self, registration_id, der, chain):
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise DpsError(401, "the client certificate is not a valid X.509 certificate") from None
        if pki_mod.common_names(cert) != [registration_id]:
            raise DpsError(401, "the client certificate's CN is not the registration id")

        def matches(e):
            if e["kind"] == "individual":
                return _x509_individual_matches(e, der)
            return _x509_group_matches(e, cert, chain)
        return self._pick(registration_id, "x509", matches)


def assign(store, enrollment, registration_id, payload, assigned_hub):
    """Create or update the hub device for an authenticated registration; returns the registration row."""
    registry = store.registry
    device_id = enrollment["device_id"] or registration_id
    if enrollment["attestation"] == "symmetricKey":
        if enrollment["kind"] == "individual":
            keys = (enrollment["primary_key"], enrollment["secondary_key"])
        else:
            keys = _group_keys(enrollment, registration_id)
        fields = {"auth": "sas", "primary_key": keys[0], "secondary_key": keys[1]}
    elif enrollment["kind"] == "individual":
        fields = {"auth": "selfSigned", "primary_thumb": enrollment["primary_thumb"],
                  "secondary_thumb": enrollment["secondary_thumb"]}
    else:
        fields = {"auth": "certificateAuthority"}
    existing = registry.get_device(device_id)
    registry.put_device(device_id, status=existing["status"] if existing else "enabled",
                        if_match="*" if existing else None, **fields)
    return store.record_registration(registration_id, enrollment, device_id, assigned_hub, payload)


# --- library functions for provisioning tools ---
@contextlib.contextmanager
def open_store(data_dir):
    """The DPS store of the hub in data_dir (which must exist: `upyhub hub init`)."""
    data = pathlib.Path(data_dir)
    if not (data / "hub.db").exists():
        raise HubError("no hub in %s: run `upyhub hub init` first" % data)
    registry = reg_mod.Registry(data)
    try:
        yield Store(registry)
    finally:
        registry.close()


def id_scope(data_dir):
    """The ID scope of the local DPS of the hub in data_dir (made on first use)."""
    with open_store(data_dir) as store:
        return store.id_scope()


def endpoint(data_dir):
    """Where devices register: {"idScope", "hostname" (the name TLS verifies), "host" (the address to
    connect to), "port", "running", "caPath"}; host and port are the running hub's, else the defaults."""
    data = pathlib.Path(data_dir)
    pki = pki_mod.PKI(data)
    scope = id_scope(data)
    try:
        info = json.loads((data / "serve.json").read_text())
    except (OSError, ValueError):
        info = {}
    running = isinstance(info, dict) and "dps_port" in info
    host = info.get("dps_host") if running else None
    return {"idScope": scope, "hostname": pki.dps_hostname,
            "host": "127.0.0.1" if host in (None, "", "0.0.0.0") else host,
            "port": info["dps_port"] if running else DEFAULT_PORT, "running": running,
            "caPath": str(pki.ca_path())}


def create_enrollment(data_dir, registration_id, *, attestation="symmetricKey", primary_key=None,
                      secondary_key=None, primary_thumbprint=None, secondary_thumbprint=None, device_id=None,
                      enabled=True):
    """An individual enrollment; returns it as DPS shows it, keys included."""
    with open_store(data_dir) as store:
        row = store.put_enrollment("individual", registration_id, attestation=attestation,
                                   status="enabled" if enabled else "disabled", primary_key=primary_key,
                                   secondary_key=secondary_key, primary_thumb=primary_thumbprint,
                                   secondary_thumb=secondary_thumbprint, device_id=device_id)
        return store.enrollment_json(row, keys=True)


def create_enrollment_group(data_dir, group_id, *, attestation="symmetricKey", primary_key=None,
                            secondary_key=None, ca_certs=(), enabled=True):
    """An enrollment group; returns it as DPS shows it, keys included. An x509 group's CA certificates
    are also registered with the hub, so the devices it provisions (certificateAuthority) can connect."""
    with open_store(data_dir) as store:
        row = store.put_enrollment("group", group_id, attestation=attestation,
                                   status="enabled" if enabled else "disabled", primary_key=primary_key,
                                   secondary_key=secondary_key, ca_certs=list(ca_certs))
        for cert in ca_certs:
            pki_mod.PKI(data_dir).register_ca(cert)
        return store.enrollment_json(row, keys=True)


def get_enrollment(data_dir, registration_id, keys=False):
    with open_store(data_dir) as store:
        return store.enrollment_json(store.require_enrollment("individual", registration_id), keys=keys)


def get_enrollment_group(data_dir, group_id, keys=False):
    with open_store(data_dir) as store:
        return store.enrollment_json(store.require_enrollment("group", group_id), keys=keys)
