"""The device tree and the mip package: .mpy files carry no host path, and the real `mpremote mip install`
installs the device package and umqtt.simple onto the simulated board from this checkout."""
import json
import pathlib
import subprocess

from simboardfixture import ROOT, UPYHUB


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_mpy_files_carry_no_host_path(tmp_path, micropython):
    out = tmp_path / "tree"
    ok(subprocess.run([UPYHUB, "build", "--board", "esp32", "--out", str(out)], capture_output=True, text=True,
                      timeout=300))
    ok(subprocess.run([UPYHUB, "build", "--board", "unix", "--out", str(tmp_path / "unix")], capture_output=True,
                      text=True, timeout=300))
    mpys = list(out.rglob("*.mpy")) + list((tmp_path / "unix").rglob("*.mpy"))
    assert len(mpys) > 10
    for p in mpys:
        data = p.read_bytes()
        for host in (str(ROOT), str(tmp_path), "/home/", "/root/", "/tmp/"):
            assert host.encode() not in data, (p, host)
    assert b"iothub/sas.py" in (out / "lib" / "iothub" / "sas.mpy").read_bytes()
    # Tracebacks from compiled modules name the module's path on the board's /lib.
    code = "import sys\nsys.path[:] = [%r]\nfrom iothub import sas\nsas.token('h/devices/d', 'bad key!', 1)" % str(
        tmp_path / "unix" / "lib")
    res = subprocess.run([micropython, "-c", code], capture_output=True, text=True, timeout=60)
    assert 'File "iothub/sas.py"' in res.stdout + res.stderr


def test_package_json_lists_the_device_package():
    pkg = json.loads((ROOT / "package.json").read_text())
    listed = {src for _, src in pkg["urls"]}
    assert listed == {"lib/iothub/%s" % p.name for p in (ROOT / "lib" / "iothub").glob("*.py")}
    assert all(dest == src[len("lib/"):] for dest, src in pkg["urls"])
    assert pkg["deps"] == [["umqtt.simple", "latest"]]


def test_mip_install_from_the_checkout(sim_board, tmp_path):
    index = tmp_path / "index"
    ok(subprocess.run([UPYHUB, "build", "--mip-index", str(index)], capture_output=True, text=True, timeout=120))
    out = ok(sim_board.mpremote("mip", "install", "--index", str(index), str(ROOT / "package.json"), timeout=180))
    assert "Installing: /lib/iothub/sas.py" in out and "Installing: /lib/umqtt/simple.mpy" in out
    lib = sim_board.flash / "lib"
    assert sorted(p.name for p in (lib / "iothub").iterdir()) == sorted(
        p.name for p in (ROOT / "lib" / "iothub").glob("*.py"))
    assert (lib / "iothub" / "session.py").read_bytes() == (ROOT / "lib" / "iothub" / "session.py").read_bytes()
    # The board imports what mip installed, from its own /lib: the package and the MQTT client it uses.
    code = ("import sys\nprint(sys.path)\nfrom iothub import sas, session\nfrom umqtt.simple import MQTTClient\n"
            "print('TOKEN', sas.token('h.azure-devices.net/devices/d', 'c2VjcmV0a2V5MTIzNDU2Nzg5MA==', 1700000000))\n"
            "print(MQTTClient.__name__)")
    printed = ok(sim_board.mpremote("exec", code))
    assert "TOKEN SharedAccessSignature sr=h.azure-devices.net%2Fdevices%2Fd&sig=" in printed
    assert printed.strip().endswith("MQTTClient")
    # Again: every file is there already, umqtt.simple by its hash.
    again = ok(sim_board.mpremote("mip", "install", "--index", str(index), str(ROOT / "package.json"), timeout=180))
    assert "Exists: /lib/umqtt/simple.mpy" in again


def test_package_json_paths_are_relative_to_it(tmp_path):
    pkg = json.loads((ROOT / "package.json").read_text())
    for _, src in pkg["urls"]:
        assert not src.startswith("/") and ".." not in pathlib.PurePosixPath(src).parts
        assert (ROOT / src).is_file()
