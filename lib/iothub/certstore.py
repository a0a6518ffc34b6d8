# Pinned root certificates on flash, with an over-the-air replacement slot that cannot
# brick the device. Used by iothub.roots (the session's side) like this:
#
#   store = certstore.Store(root_dir, ram=state)  # root_dir = the flash certs folder; never raises.
#                                                 # state: a dict the caller keeps across loads (the
#                                                 # counts below also live there: see "RAM" below)
#   cadata, slot = store.roots_for_connect()      # bytes for load_verify_locations; slot "staged"|"active"|"fallback"
#                                                 # (right before the handshake: a hand-out of "staged"
#                                                 #  is one trial, recorded before the handshake starts)
#   store.tls_ok(slot)                            # TLS with the hub worked: "staged" is promoted to active,
#                                                 # the old active kept as fallback
#   store.tls_failed(slot)                        # the hub could not be verified with the set: a staged set
#                                                 # is discarded after `tries` (3) trials; `tries` failures of
#                                                 # active in a row -> one attempt with fallback
#   store.tls_untried(slot)                       # no verdict (network, memory, server): the trial is given back
#   store.stage(data, sha256_hex, source="ota")   # validate + write staged; ValueError with a clear message
#   store.install_active(data, source="provision")  # provisioning's first write
#   store.status()                                # dict for the `rootCerts` reported property (never raises)
#   store.problems                                # torn/corrupt slots found (and repaired) at load, flash errors
#
# RAM: every count (staged trials, active failures) and every decision the flash could not record
# (a staged set given up, a promotion that could not be renamed into place) is also kept in `ram`,
# so a full or read-only flash never keeps the device on a set that does not work: it goes back
# to its working set within `tries` attempts and says once that the flash could not record it.
#
# Use a fresh SSLContext for every attempt: load_verify_locations appends to the context's
# trusted roots (mbedtls), so a reused context would keep trusting a discarded set. A set that
# mbedtls refuses to load counts as a failed attempt (tls_failed). Store(..., tls_check=True)
# also makes stage() try mbedtls itself, at the cost of a TLS context (~40 KB heap on unix/rp2).
#
# Layout: certs/{active,staged,fallback}/ each hold roots.pem (or roots.der) and `manifest`: one line of
# JSON {"v":1, "file", "sha256", "size", "seq", "source", "written", "notAfter", "certs":[{"cn","sha256","notAfter"}]}
# and a second line with that line's SHA-256.
# A slot is valid only if its manifest parses, has the right types and the content's SHA-256 matches
# it. Slots are written whole into "<slot>.tmp/" and renamed into place, so a power cut leaves either the old
# slot, the new one, a leftover *.tmp (removed at load) or no slot; at load a missing or corrupt
# active set is restored from fallback. Works on CPython too (the host tools write the same format).
import binascii
import hashlib
import json
import os

from iothub import clock

# x509 is imported only where a set is validated, not on the connect path or for reports:
# a board keeps ~7 KB more heap for TLS while it only connects.

ACTIVE = "active"
STAGED = "staged"
FALLBACK = "fallback"
MANIFEST = "manifest"
TRIALS = "trials"
MAX_BYTES = 16384
MAX_CERTS = 8
TRIES = 3
DAY = 86400
_CHUNK = 512

# Tests set this to a function(op, path) called before every flash operation (to cut power there).
_hook = None


def _step(op, path):
    if _hook is not None:
        _hook(op, path)


def civil_from_days(z):
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def iso(t):
    # Unix seconds -> "YYYY-MM-DDTHH:MM:SSZ" (what the twin reports).
    days, s = divmod(int(t), 86400)
    y, m, d = civil_from_days(days)
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, s // 3600, s // 60 % 60, s % 60)


def _sha(data):
    return binascii.hexlify(hashlib.sha256(data).digest()).decode()


def _stat(path):
    try:
        return os.stat(path)
    except OSError:
        return None


def _isdir(path):
    st = _stat(path)
    return st is not None and st[0] & 0x4000 != 0


def _sync():
    if hasattr(os, "sync"):
        os.sync()


def _remove(path):
    _step("remove", path)
    os.remove(path)


def _rmtree(path):
    if not _isdir(path):
        if _stat(path) is not None:
            _remove(path)
        return
    for name in os.listdir(path):
        _rmtree(path + "/" + name)
    _step("rmdir", path)
    os.rmdir(path)


def _rename(a, b):
    _step("rename", b)
    os.rename(a, b)


def _write(path, data):
    # Written in chunks so a cut can land mid-file (what a real power loss does).
    _step("open", path)
    with open(path, "wb") as f:
        for i in range(0, len(data), _CHUNK):
            _step("write", path)
            f.write(data[i:i + _CHUNK])
        _step("flush", path)
        f.flush()
    _sync()


def _read(path, limit):
    # Sized by stat first: read(limit) would allocate the whole limit on a small heap.
    if os.stat(path)[6] > limit:
        raise ValueError("file is larger than %d bytes" % limit)
    with open(path, "rb") as f:
        return f.read()


def _why(e):
    try:
        from iothub.transport import why

        return why(e)
    except ImportError:  # CPython host tools: no device package (nor tls) on the path
        return str(e)


def _hex64(s):
    if not isinstance(s, str) or len(s) != 64:
        return False
    for c in s:
        if c not in "0123456789abcdef":
            return False
    return True


def _format_manifest(m):
    # Line 1 the JSON, line 2 its SHA-256: a flipped bit or a torn write anywhere is caught
    # (MicroPython's json would even accept an object cut before its closing brace).
    body = json.dumps(m).encode()
    return body + b"\n" + _sha(body).encode() + b"\n"


def _parse_manifest(raw):
    lines = raw.split(b"\n")
    if len(lines) != 3 or lines[2] != b"" or _sha(lines[0]).encode() != lines[1]:
        raise ValueError("manifest is torn or altered")
    return json.loads(lines[0])


def check(data, sha256_hex=None, now=None, max_bytes=MAX_BYTES, tls_check=False):
    # Validate a root set before it may touch flash; returns the list of x509.Cert.
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError("root certificates must be bytes (PEM text or DER)")
    if not data:
        raise ValueError("root certificate payload is empty")
    if len(data) > max_bytes:
        raise ValueError("root certificate payload is %d bytes, more than the limit of %d" % (len(data), max_bytes))
    if sha256_hex is not None:
        want = sha256_hex.lower() if isinstance(sha256_hex, str) else None
        if not _hex64(want):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        got = _sha(data)
        if got != want:
            raise ValueError("SHA-256 mismatch: the payload hashes to %s..., not %s..." % (got[:16], want[:16]))
    from iothub import x509

    certs = x509.load(data)
    if len(certs) > MAX_CERTS:
        raise ValueError("%d certificates is more than the limit of %d" % (len(certs), MAX_CERTS))
    t = clock.now() if now is None else now
    if not clock.is_set(t):
        raise ValueError("clock is not set: cannot check the roots' validity dates; set it by NTP first")
    for c in certs:
        name = "'" + (c.cn or c.sha256[:16]) + "'"
        if not c.is_ca:
            raise ValueError(name + " is not a CA certificate (basicConstraints cA is not set)")
        if not c.can_sign:
            raise ValueError(name + " may not sign certificates (keyUsage lacks keyCertSign)")
        if not c.self_issued:
            raise ValueError(name + " is not a root (its issuer is another CA): pin roots, not intermediates")
        if c.not_after <= t:
            raise ValueError(name + " expired on " + iso(c.not_after))
        if c.not_before > t:
            raise ValueError(name + " is not valid before " + iso(c.not_before))
    if tls_check:
        _tls_check(data)
    return certs


def _tls_check(data):
    # Let mbedtls itself parse the set. Off by default: a TLS context costs ~40 KB of heap on
    # ports whose mbedtls allocates there (unix, rp2), and the trial catches the same thing
    # (a set mbedtls refuses fails its trials and is discarded).
    import sys

    if sys.implementation.name != "micropython":
        return
    try:
        import tls
    except ImportError:
        import ssl as tls
    try:
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(data)
    except MemoryError:
        raise
    except Exception as e:
        raise ValueError("the TLS stack refuses these certificates: %s" % e)


class Store:
    def __init__(self, root_dir, tries=TRIES, max_bytes=MAX_BYTES, tls_check=False, ram=None):
        self.root = root_dir.rstrip("/") or "/"
        self.tls_check = tls_check
        self.tries = tries
        self.max_bytes = max_bytes
        self.problems = []
        self._m = {}  # slot -> manifest of a valid slot
        # What must survive a flash that cannot be written (see "RAM" at the top):
        #   "trials": [seq, n] of the staged set   "failures": active failures in a row
        #   "given_up": staged seqs to ignore      "prefer": "staged"/"fallback" proven but not renamed in
        self.ram = ram if ram is not None else {}
        self._reload()  # never raises: a broken store is reported, never crashes boot

    @property
    def _active_failures(self):
        return self.ram.get("failures", 0)

    @_active_failures.setter
    def _active_failures(self, n):
        self.ram["failures"] = n

    # ---- loading and repair

    def _dir(self, slot):
        return self.root + "/" + slot

    def _problem(self, msg):
        if msg not in self.problems:
            self.problems.append(msg)

    def _read_slot(self, slot):
        # -> manifest (valid), None (absent) or False (torn/corrupt).
        d = self._dir(slot)
        if _stat(d) is None:
            return None
        try:
            m = _parse_manifest(_read(d + "/" + MANIFEST, 4096))
            if not isinstance(m, dict) or m.get("v") != 1:
                raise ValueError("unknown manifest version")
            if m.get("file") not in ("roots.pem", "roots.der") or not _hex64(m.get("sha256")):
                raise ValueError("manifest fields are missing")
            for k in ("seq", "size", "written", "notAfter"):
                if not isinstance(m.get(k), int):
                    raise ValueError("manifest fields are missing")
            if not isinstance(m.get("certs"), list) or not m["certs"] or len(m["certs"]) > MAX_CERTS:
                raise ValueError("manifest fields are missing")
            for c in m["certs"]:
                if (not isinstance(c, dict) or not isinstance(c.get("cn"), str) or not _hex64(c.get("sha256"))
                        or not isinstance(c.get("notAfter"), int)):
                    raise ValueError("manifest entries have the wrong types")
            if m.get("source") is not None and not isinstance(m["source"], str):
                raise ValueError("manifest entries have the wrong types")
            data = _read(d + "/" + m["file"], self.max_bytes)
            if _sha(data) != m["sha256"]:
                raise ValueError("content does not match the manifest's SHA-256")
            return m
        except MemoryError:
            raise
        except Exception as e:
            self._problem("%s set is torn or corrupt (%s): ignored" % (slot, e))
            return False

    def _load(self):
        if not _isdir(self.root):
            return
        for name in os.listdir(self.root):
            if name.endswith(".tmp"):  # a write that never finished
                self._problem("removed %s left by an interrupted write" % name)
                self._drop(name)
        for slot in (ACTIVE, STAGED, FALLBACK):
            m = self._read_slot(slot)
            if m is False:
                self._drop(slot)
            elif m is not None:
                self._m[slot] = m
        if ACTIVE not in self._m and FALLBACK in self._m:
            # An interrupted promotion (or a corrupt active set): the fallback is the last set that worked.
            self._problem("active set missing: restored the fallback set (seq %d)" % self._m[FALLBACK]["seq"])
            try:
                _rename(self._dir(FALLBACK), self._dir(ACTIVE))
                self._m[ACTIVE] = self._m.pop(FALLBACK)
            except OSError as e:
                self._problem("could not restore the fallback set: %s" % _why(e))

    def _drop(self, name):
        try:
            _rmtree(self._dir(name))
        except OSError as e:
            self._problem("could not remove %s from flash: %s" % (name, _why(e)))

    # ---- reading

    def _data(self, slot):
        # The slot's bytes, re-checked against its manifest (flash can rot after boot).
        m = self._m.get(slot)
        if m is None:
            return None
        try:
            data = _read(self._dir(slot) + "/" + m["file"], self.max_bytes)
            if _sha(data) == m["sha256"]:
                return data
            why = "content does not match the manifest's SHA-256"
        except OSError as e:
            why = str(e)
        self._problem("%s set is torn or corrupt (%s): ignored" % (slot, why))
        del self._m[slot]
        return None

    def _trials(self):
        # The larger of the count on flash and the one in RAM (the flash may not take writes).
        m = self._m.get(STAGED)
        t = self.ram.get("trials")
        n = t[1] if t and m and t[0] == m["seq"] else 0
        try:
            seq, k = _read(self.root + "/" + TRIALS, 64).split()
            if int(seq) == m["seq"] and int(k) > n:
                n = int(k)
        except Exception:
            pass
        return n

    def _set_trials(self, n):
        seq = self._m[STAGED]["seq"]
        self.ram["trials"] = [seq, n]
        path = self.root + "/" + TRIALS
        try:
            _write(path + ".tmp", ("%d %d" % (seq, n)).encode())
            _rename(path + ".tmp", path)
        except OSError as e:
            self._problem("could not record a staged trial on flash (%s): counted in RAM" % _why(e))

    def _usable_staged(self):
        m = self._m.get(STAGED)
        return m is not None and m["seq"] not in self.ram.get("given_up", ())

    def roots_for_connect(self):
        prefer = self.ram.get("prefer")
        if prefer is not None and prefer[0] in self._m and self._m[prefer[0]]["seq"] == prefer[1]:
            # proven by a TLS session, but the flash could not rename it into place: keep using it
            data = self._data(prefer[0])
            if data is not None:
                return data, prefer[0]
        if self._usable_staged():
            n = self._trials()
            if n >= self.tries and ACTIVE in self._m:
                self.discard_staged("it failed %d TLS attempts" % n)
            else:
                data = self._data(STAGED)
                if data is not None:
                    self._set_trials(n + 1)
                    return data, STAGED
                self._drop(STAGED)
        if self._active_failures >= self.tries and FALLBACK in self._m:
            self._active_failures = 0  # one attempt with the previous set, then back to active
            data = self._data(FALLBACK)
            if data is not None:
                return data, FALLBACK
        data = self._data(ACTIVE)
        if data is None and FALLBACK in self._m:
            data = self._data(FALLBACK)
            if data is not None:
                return data, FALLBACK
        if data is None:
            raise ValueError("no valid root certificates in %s: provision them (upyhub certs)" % self.root)
        return data, ACTIVE

    # ---- outcomes

    def tls_ok(self, slot):
        if slot == ACTIVE:
            self._active_failures = 0
        elif slot in (STAGED, FALLBACK) and slot in self._m:
            seq = self._m[slot]["seq"]
            try:
                self._promote(slot)
                self.ram.pop("prefer", None)
            except OSError as e:  # flash full or failing: the next boot finishes or undoes it
                self._problem("could not make the %s set active on flash (%s): using it from there" % (slot, _why(e)))
                self._reload()
                self.ram["prefer"] = [slot, seq]
                self.ram.pop("trials", None)
                self._active_failures = 0

    def _reload(self):
        self._m = {}
        try:
            self._load()
        except MemoryError:
            raise  # not a broken store: the caller's heap (never "no valid roots")
        except Exception as e:
            self._problem("certificate store could not be loaded: %r" % e)

    def tls_failed(self, slot):
        prefer = self.ram.get("prefer")
        if prefer is not None and prefer[0] == slot:
            self.ram.pop("prefer", None)  # proven once, failing now: back to the rules below
        if slot == STAGED and STAGED in self._m:
            n = self._trials()
            if n >= self.tries and ACTIVE in self._m:
                self.discard_staged("it failed %d TLS attempts" % n)
        elif slot == ACTIVE:
            self._active_failures += 1

    def tls_untried(self, slot):
        # The attempt ended before any verdict on the roots (network down, hub unreachable, heap
        # too small): a staged set gets its trial back.
        if slot == STAGED and self._usable_staged():
            n = self._trials()
            if n > 0:
                self._set_trials(n - 1)

    def _promote(self, slot):
        # staged -> active (old active -> fallback), or fallback <-> active. Each step is one
        # rename; a cut in between leaves active missing, and _load restores it from fallback.
        act, fb = self._dir(ACTIVE), self._dir(FALLBACK)
        if slot == STAGED:
            if ACTIVE in self._m:
                _rmtree(fb)
                _rename(act, fb)
                self._m[FALLBACK] = self._m.pop(ACTIVE)
            else:
                _rmtree(act)  # found corrupt since boot
            _rename(self._dir(STAGED), act)
            self._m[ACTIVE] = self._m.pop(STAGED)
            self._clear_trials()
        else:
            swap = self._dir("swap.tmp")
            old = self._m.pop(ACTIVE, None)
            if old is not None:
                _rename(act, swap)
            else:
                _rmtree(act)  # found corrupt since boot
            _rename(fb, act)
            self._m[ACTIVE] = self._m.pop(FALLBACK)
            if old is not None:
                _rename(swap, fb)
                self._m[FALLBACK] = old
        self._active_failures = 0

    def _clear_trials(self):
        try:
            _remove(self.root + "/" + TRIALS)
        except OSError:
            pass

    def discard_staged(self, why="discarded"):
        m = self._m.pop(STAGED, None)
        if m is not None:
            self._problem("staged set seq %d discarded: %s" % (m["seq"], why))
            given_up = self.ram.setdefault("given_up", [])
            if m["seq"] not in given_up:
                given_up.append(m["seq"])  # ignored even if the flash keeps it (read-only, full)
        self._drop(STAGED)
        self._clear_trials()

    # ---- writing

    def _manifest(self, data, certs, source):
        seq = 0
        for m in self._m.values():
            seq = max(seq, m["seq"])
        return {
            "v": 1,
            "file": "roots.der" if data[0] == 0x30 else "roots.pem",
            "sha256": _sha(data),
            "size": len(data),
            "seq": seq + 1,
            "source": str(source)[:32],
            "written": clock.now(),
            "notAfter": min(c.not_after for c in certs),
            "certs": [{"cn": c.cn[:64], "sha256": c.sha256, "notAfter": c.not_after} for c in certs],
        }

    def _write_slot(self, slot, data, m):
        if not _isdir(self.root):
            _step("mkdir", self.root)
            os.mkdir(self.root)
        try:
            self._write_slot_steps(slot, data, m)
        except OSError:
            self._reload()  # the flash decides what is valid, as on boot
            raise

    def _write_slot_steps(self, slot, data, m):
        tmp = self._dir(slot + ".tmp")
        _rmtree(tmp)
        _step("mkdir", tmp)
        os.mkdir(tmp)
        _write(tmp + "/" + m["file"], data)
        _write(tmp + "/" + MANIFEST, _format_manifest(m))
        if slot == ACTIVE and ACTIVE in self._m:
            _rmtree(self._dir(FALLBACK))
            self._m.pop(FALLBACK, None)
            _rename(self._dir(ACTIVE), self._dir(FALLBACK))
            self._m[FALLBACK] = self._m.pop(ACTIVE)
        else:
            _rmtree(self._dir(slot))
            self._m.pop(slot, None)
        _rename(tmp, self._dir(slot))
        self._m[slot] = m

    def stage(self, data, sha256_hex, source="ota"):
        # -> the manifest written (or the active one, unchanged, when data is already active).
        data = bytes(data) if isinstance(data, bytearray) else data
        certs = check(data, sha256_hex, max_bytes=self.max_bytes, tls_check=self.tls_check)
        act = self._m.get(ACTIVE)
        if act is not None and act["sha256"] == sha256_hex.lower():
            return act
        self._write_slot(STAGED, data, self._manifest(data, certs, source))
        self._clear_trials()
        return self._m[STAGED]

    def install_active(self, data, source="provision"):
        data = bytes(data) if isinstance(data, bytearray) else data
        certs = check(data, max_bytes=self.max_bytes, tls_check=self.tls_check)
        self._write_slot(ACTIVE, data, self._manifest(data, certs, source))
        self._active_failures = 0
        return self._m[ACTIVE]

    # ---- reporting

    def slot(self, slot):
        return self._m.get(slot)

    def status(self, warn_days=30, now=None):
        # The `rootCerts` reported property: active fingerprints and earliest expiry, the trial
        # state, and the expiry warning. Never raises: what cannot be described is a problem.
        try:
            return self._status(warn_days, now)
        except Exception as e:
            return {"active": None, "earliestExpiry": None, "staged": None, "fallback": None,
                    "problems": (self.problems + ["status could not be read: %s" % _why(e)])[-5:]}

    def _status(self, warn_days, now):
        act = self._m.get(ACTIVE)
        out = {"active": None, "earliestExpiry": None, "staged": None, "fallback": None, "problems": self.problems[-5:],
               "warnDays": warn_days, "expiresInDays": None, "expiryWarning": False}
        t = clock.now() if now is None else now
        if act is not None:
            out["active"] = {
                "seq": act["seq"],
                "source": act.get("source"),
                "certs": [{"cn": c["cn"], "sha256": c["sha256"], "notAfter": iso(c["notAfter"])} for c in act["certs"]],
            }
            out["earliestExpiry"] = iso(act["notAfter"])
            if clock.is_set(t):
                out["expiresInDays"] = (act["notAfter"] - t) // DAY
                out["expiryWarning"] = act["notAfter"] - t < warn_days * DAY
        st = self._m.get(STAGED)
        if st is not None:
            out["staged"] = {"seq": st["seq"], "sha256": st["sha256"], "trials": self._trials(), "maxTrials": self.tries}
            if not self._usable_staged():
                out["staged"]["givenUp"] = True
        fb = self._m.get(FALLBACK)
        if fb is not None:
            out["fallback"] = {"seq": fb["seq"], "fingerprints": [c["sha256"] for c in fb["certs"]]}
        return out

    def expiring(self, warn_days=30, now=None):
        # Active roots that expire within warn_days: [{"cn","sha256","notAfter","daysLeft"}]; empty
        # on an unset clock.
        t = clock.now() if now is None else now
        act = self._m.get(ACTIVE)
        out = []
        if act is not None and clock.is_set(t):
            for c in act["certs"]:
                left = c["notAfter"] - t
                if left < warn_days * DAY:
                    out.append({"cn": c["cn"], "sha256": c["sha256"], "notAfter": iso(c["notAfter"]),
                                "daysLeft": left // DAY})
        return out
