# The pinned roots as the session sees them: which set a handshake uses (chosen before it starts,
# its outcome reported once), the `updateRootCerts` direct method, the `rootCerts` reported
# property and the expiry alert. The session owns one Roots; an app never has to wire any of it.
#
# The cert store with its X.509 reader is ~15-20 KB of code a connected session does not need:
# it is loaded for each use and unloaded after. What must outlive a load (trial and failure
# counts, decisions a full or read-only flash could not record) stays in `_ram`.
import gc
import json

from iothub import transport

METHOD = "updateRootCerts"


class Attempt:
    # One handshake's root set: .data (bytes for the TLS context), .slot. done() once, with
    #   "ok"       a TLS session with the hub was established (whatever MQTT said next)
    #   "verify"   the hub could not be verified with this set: counted against it
    #   "untried"  no verdict (network, server, heap): not counted
    def __init__(self, roots, data, slot):
        self.roots = roots
        self.data = data
        self.slot = slot

    def done(self, outcome):
        r = self.roots
        self.data = None
        if self.slot == "active" and outcome != "untried":
            # the common case needs no store: a count in RAM (failures in a row send the next
            # attempt to the fallback set)
            r._ram["failures"] = 0 if outcome == "ok" else r._ram.get("failures", 0) + 1
            return
        if self.slot == "active":
            return
        name = {"ok": "tls_ok", "verify": "tls_failed"}.get(outcome, "tls_untried")
        r.use(lambda s: getattr(s, name)(self.slot))
        r.changed = True


def _verified(path, sha):
    # The file's bytes if they still hash to what its manifest said (flash can rot), else None.
    import binascii
    import hashlib
    import os

    try:
        if os.stat(path)[6] > 16384:
            return None
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data if binascii.hexlify(hashlib.sha256(data).digest()).decode() == sha else None


class Roots:
    def __init__(self, certs_dir, warn_days=30, log=print):
        self.dir = certs_dir
        self.warn_days = warn_days
        self.log = log
        self._ram = {}
        self._logged = []  # store problems already logged (each is logged once)
        self._status = None  # JSON text of `rootCerts`, until something changes
        self.expiring = []  # active roots expiring within warn_days, as of the last refresh
        self.changed = True
        # (file, sha256) of the active set while nothing else is pending (no staged set, no failures,
        # no set kept in RAM only): a connection then reads and checks that file without the store.
        self._fast = None

    def use(self, fn):
        # fn(store) with the store loaded, then unloaded (also after a MemoryError in an import).
        s = None
        try:
            from iothub import certstore

            s = certstore.Store(self.dir, ram=self._ram)
            return fn(s)
        finally:
            self._fast = None
            if s is not None:
                m = s.slot("active")
                if m is not None and not s._usable_staged() and not s.ram.get("prefer"):
                    self._fast = (self.dir + "/active/" + m["file"], m["sha256"])
                for p in s.problems:
                    if p not in self._logged:
                        self._logged.append(p)
                        self.log("certs: " + p)
                        self.changed = True
                del self._logged[:-16]
            s = certstore = None
            transport._unload("certstore", "x509", "rootupdate")
            gc.collect()

    def active_data(self):
        # The active set's bytes when nothing else is pending (read and checked without the store), else None.
        f = self._fast
        if f is not None and not self._ram.get("failures"):
            return _verified(f[0], f[1])
        return None

    def attempt(self):
        # The set for the next handshake. Raises ValueError when the flash holds no valid roots.
        data = self.active_data()
        if data is not None:
            return Attempt(self, data, "active")
        data, slot = self.use(lambda s: s.roots_for_connect())  # the store decides (and reports damage)
        return Attempt(self, data, slot)

    def report(self):
        # JSON text of the `rootCerts` reported property (recomputed only after a change or refresh()).
        if self._status is None or self.changed:
            self._status, self.expiring = self.use(self._describe)
            self.changed = False
        return self._status

    def refresh(self):
        # Time passes: days left and the expiry alert are recomputed on the next report().
        self.changed = True

    def _describe(self, s):
        return json.dumps(s.status(self.warn_days)), s.expiring(self.warn_days)

    def update(self, payload):
        # The updateRootCerts direct method: -> (status, body).
        def handle(s):
            from iothub import rootupdate

            return rootupdate.handle(s, payload)

        try:
            return self.use(handle)
        except MemoryError:
            return 400, {"status": "refused", "message": "not enough memory to check these certificates"}
        finally:
            self.changed = True
