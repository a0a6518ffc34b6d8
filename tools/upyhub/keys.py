"""Per-device keys derived from a DPS group enrollment key, for factories that work offline.

deviceKey = base64(HMAC-SHA256(base64decode(groupKey), registrationId)) (IOTHUB-FACTS.md).
The keys go to a file only (mode 0600, written whole or not at all), never to the terminal.
"""
import csv
import io
import pathlib

from upyhub import files, sas
from upyhub.errors import UsageError


def derive_all(group_key, ids):
    rows = []
    seen = set()
    for reg_id in ids:
        if reg_id in seen:
            raise UsageError("registration id %s is listed twice" % reg_id)
        seen.add(reg_id)
        try:
            rows.append((reg_id, sas.derive_device_key(group_key, reg_id)))
        except UsageError as exc:
            raise UsageError("%s: %s" % (reg_id, exc))
    if not rows:
        raise UsageError("no registration ids given")
    return rows


def write_keys(path, rows, force=False):
    p = pathlib.Path(path)
    if p.exists() and not force:
        raise UsageError("%s exists (use --force to replace it)" % path)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["registration_id", "device_key"])
    w.writerows(rows)
    files.write_atomic(p, buf.getvalue().encode(), private=True)


def read_ids(path):
    """Ids from a file: one per line, or a CSV whose header names a device_id/registration_id column."""
    try:
        rows = [r for r in csv.reader(io.StringIO(pathlib.Path(path).read_text())) if r and r[0].strip()]
    except OSError:
        raise UsageError("cannot read %s" % path)
    col = 0
    if rows:
        header = [c.strip().lower() for c in rows[0]]
        for name in ("registration_id", "device_id"):
            if name in header:
                col = header.index(name)
                rows = rows[1:]
                break
    return [r[col].strip() for r in rows if len(r) > col and not r[0].strip().startswith("#")]
