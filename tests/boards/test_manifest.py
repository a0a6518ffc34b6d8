"""The boards' manifest.py (what a frozen firmware build takes from this repo) and its check."""
import pathlib
import shutil
import subprocess
import sys

import pytest

from upyhub import build, paths
from upyhub.errors import UsageError

ROOT = pathlib.Path(__file__).resolve().parents[2]
UPYHUB = str(pathlib.Path(sys.executable).parent / "upyhub")


@pytest.mark.parametrize("board", ["esp32", "rp2_pico_w", "unix"])
def test_manifest_freezes_the_device_tree(board):
    files = {p.relative_to(ROOT).as_posix() for p in build.manifest_files(board)}
    assert "boards/%s/board.py" % board in files
    assert {"lib/iothub/%s" % p.name for p in (ROOT / "lib" / "iothub").glob("*.py")} <= files
    assert "lib/iothub/station.py" in files  # the board module's shared half
    assert "firmware/main.py" not in files and "firmware/boot.py" not in files


@pytest.mark.parametrize("board", ["esp32", "rp2_pico_w", "unix"])
def test_build_checks_the_manifest(board, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([UPYHUB, "build", "--board", board, "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "manifest: boards/%s/manifest.py freezes" % board in proc.stdout
    assert (out / "lib" / "board.mpy").exists()


@pytest.fixture
def boards_copy(tmp_path, monkeypatch):
    dst = tmp_path / "boards"
    shutil.copytree(ROOT / "boards" / "esp32", dst / "esp32")
    shutil.copyfile(ROOT / "boards" / "manifest_common.py", dst / "manifest_common.py")
    # The manifest's relative paths reach ../../lib: mirror the repo's layout around the copy.
    (tmp_path / "lib").symlink_to(ROOT / "lib")
    (tmp_path / "firmware").symlink_to(ROOT / "firmware")
    monkeypatch.setattr(paths, "BOARDS", dst)
    return dst / "esp32" / "manifest.py"


def test_missing_file_is_reported(boards_copy):
    boards_copy.write_text(boards_copy.read_text() + '\nmodule("gone.py")\n')
    with pytest.raises(UsageError, match="module gone.py: no file"):
        build.manifest_files("esp32")


def test_included_manifest_is_checked(boards_copy):
    common = boards_copy.parent.parent / "manifest_common.py"
    common.write_text(common.read_text() + '\nmodule("gone.py", base_path="../lib")\n')
    with pytest.raises(UsageError, match="module gone.py: no file .*lib/gone.py"):
        build.manifest_files("esp32")


def test_missing_include_is_reported(boards_copy):
    (boards_copy.parent.parent / "manifest_common.py").unlink()
    with pytest.raises(UsageError, match="include ../manifest_common.py: not found"):
        build.manifest_files("esp32")


def test_unfrozen_shared_module_is_reported(boards_copy):
    boards_copy.write_text(boards_copy.read_text().replace('include("../manifest_common.py")', ""))
    with pytest.raises(UsageError, match="lib/iothub/station.py is not frozen"):
        build.manifest_files("esp32")


def test_unfrozen_board_module_is_reported(boards_copy):
    boards_copy.write_text(boards_copy.read_text().replace('module("board.py")', ""))
    with pytest.raises(UsageError, match="board.py is not frozen"):
        build.manifest_files("esp32")


def test_broken_manifest_is_one_line(boards_copy):
    boards_copy.write_text("package(\n")
    with pytest.raises(UsageError) as exc:
        build.manifest_files("esp32")
    assert "SyntaxError" in str(exc.value) and "\n" not in str(exc.value)


def test_uncompilable_file_fails_the_build(boards_copy, tmp_path):
    (boards_copy.parent / "extra.py").write_text("def broken(:\n")
    boards_copy.write_text(boards_copy.read_text() + '\nmodule("extra.py")\n')
    with pytest.raises(UsageError, match="mpy-cross failed on .*extra.py"):
        build.build("esp32", tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
