"""Fetch umqtt.simple from its PyPI package into build/umqtt/ (never into the repo).

PyPI's micropython-umqtt.simple 1.3.4 is an sdist without setup.py, so pip cannot
download it; the file is taken from the registry's JSON API instead and checked
against the digest pinned here.
"""
import hashlib
import io
import json
import pathlib
import sys
import tarfile
import urllib.request

PACKAGE = "micropython-umqtt.simple"
VERSION = "1.3.4"
SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
ROOT = pathlib.Path(__file__).resolve().parents[2]
DEST = ROOT / "build" / "umqtt" / "umqtt"


def main():
    target = DEST / "simple.py"
    if target.exists():
        return 0
    with urllib.request.urlopen("https://pypi.org/pypi/%s/json" % PACKAGE, timeout=60) as r:
        meta = json.load(r)
    files = [f for f in meta["releases"].get(VERSION, []) if f["packagetype"] == "sdist"]
    if not files:
        print("umqtt: %s %s is not on PyPI" % (PACKAGE, VERSION), file=sys.stderr)
        return 1
    with urllib.request.urlopen(files[0]["url"], timeout=60) as r:
        blob = r.read()
    if hashlib.sha256(blob).hexdigest() != SHA256:
        print("umqtt: downloaded sdist does not match the pinned sha256", file=sys.stderr)
        return 1
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/umqtt/simple.py"))
        source = tar.extractfile(member).read()
    DEST.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(source)
    tmp.replace(target)
    print("umqtt: %s %s -> %s" % (PACKAGE, VERSION, target.relative_to(ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
