"""build/micropython-32-frozen: the unix port with boards/unix/manifest.py frozen in (tools/setup/micropython32.sh),
as an ESP32 or Pico W image is built with theirs."""
import json
import pathlib
import subprocess

import pytest

from upyhub import build, sim

ROOT = pathlib.Path(__file__).resolve().parents[2]
FROZEN = ROOT / "build" / "micropython-32-frozen"
PLAIN = ROOT / "build" / "micropython-32"


@pytest.fixture(scope="module")
def frozen():
    if not FROZEN.exists():
        pytest.fail("build/micropython-32-frozen is missing: run `make setup` (make test does it)")
    return FROZEN


def _modules(exe):
    out = subprocess.run([str(exe), "-c", "help('modules')"], capture_output=True, text=True, timeout=30).stdout
    return set(out.split("Plus any modules")[0].split())


def test_frozen_modules_are_exactly_what_the_manifest_names(frozen):
    want = set()
    for p in build.manifest_files("unix"):  # lib/iothub/x.py -> iothub/x, build/umqtt/umqtt/simple.py -> umqtt/simple
        rel = p.relative_to(ROOT)
        base = {"lib": 1, "build": 2}.get(rel.parts[0], len(rel.parts) - 1)
        want.add(pathlib.Path(*rel.parts[base:]).with_suffix("").as_posix())
    got = _modules(frozen) - _modules(PLAIN)  # what freezing added to the same port
    assert got == want
    assert {"board", "app", "iothub/session", "iothub/sas"} <= got
    assert not {"main", "boot"} & got  # they stay files on the flash, as on every board


APP = """
import sys
def run(session, board, cfg):
    import iothub.session, umqtt.simple
    print("PROBE " + __import__("json").dumps({"board": board.__file__, "session": iothub.session.__file__,
          "umqtt": umqtt.simple.__file__, "app": __file__, "path": sys.path}))
    raise SystemExit(0)
"""


def test_frozen_modules_come_before_lib_and_files_on_the_path_before_both(frozen, tmp_path):
    # As on a board: a frozen module wins over the same one in /lib (a stale board.mpy there changes
    # nothing), boot.py and main.py run from files, and code put first on the path (a user's own app)
    # wins over the frozen sample app.
    tree = build.frozen_tree(tmp_path / "tree")
    (tree / "lib" / "board.py").write_text("raise ImportError('the /lib copy was imported')\n")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "app.py").write_text(APP)
    flash = tmp_path / "flash"
    sim.write_flash(flash, hostname="h.azure-devices.net", device_id="frozen-1", device_key=sim_key(),
                    ca_pem=ca_pem(), port=8883)
    proc = sim.start(flash, tree=tree, executable=str(frozen), path_extra=[tmp_path / "own"])
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    probe = json.loads(next(x for x in out.splitlines() if x.startswith("PROBE "))[6:])
    assert probe["board"] == "board.py" and probe["session"] == "iothub/session.py"  # frozen names
    assert probe["umqtt"] == "umqtt/simple.py"
    assert probe["app"].endswith("/app.py") and probe["app"] != "app.py"  # the file, not the frozen sample
    assert probe["path"].index(".frozen") < len(probe["path"]) - 1  # the tree's /lib after it


def sim_key():
    import base64
    import os

    return base64.b64encode(os.urandom(32)).decode()


def ca_pem():
    import trustme

    return trustme.CA().cert_pem.bytes()
