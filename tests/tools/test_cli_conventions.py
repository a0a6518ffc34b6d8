"""CLI conventions for every verb but `hub` (tests/tools/hub covers that one): help on every option, bare
`upyhub` and verb groups print help, exit statuses 0/1/2, -o json on the show verbs, one-line errors."""
import argparse
import json
import subprocess

import pytest

from simboardfixture import UPYHUB
from upyhub import cli


def upyhub(*args, **kw):
    return subprocess.run([UPYHUB] + [str(a) for a in args], capture_output=True, text=True, timeout=120, **kw)


def parsers(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if path or name != "hub":
                    yield from parsers(sub, path + (name,))


def test_every_option_has_help():
    missing = []
    for path, parser in parsers(cli.build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append("upyhub %s %s" % (" ".join(path), "/".join(action.option_strings) or action.dest))
    assert missing == []


@pytest.mark.parametrize("args", [[], ["certs"], ["keys"]])
def test_bare_verbs_print_help(args):
    res = upyhub(*args)
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.startswith("usage: upyhub") and "positional arguments" in res.stdout


def test_help_documents_exit_statuses():
    out = upyhub("--help").stdout
    assert "exit status: 0 success, 1 failure at run time" in " ".join(out.split())
    assert "2 usage error" in " ".join(out.split())


@pytest.mark.parametrize("args, status, text", [
    (["sim", "--flash", "{tmp}/f", "--device", "bad id"], 2, "device id"),
    (["sim", "--flash", "{tmp}/f", "--device", "dev1", "--hub", "{tmp}/nohub"], 1, "no local hub is running"),
    (["sim", "--flash", "{tmp}/f"], 2, "holds no config.json"),
    (["sim-board", "--flash", "{tmp}/f", "--size", "lots"], 2, "--size"),
    (["provision", "/dev/null", "--board", "unix", "--device-id", "x", "--data", "{tmp}/nohub"], 1,
     "no local hub is running"),
    (["provision", "/dev/null", "--board", "nope"], 2, "invalid choice"),
    (["audit", "{tmp}/no-port"], 1, "cannot open"),
    (["certs", "stage-local", "--flash", "{tmp}/f", "{tmp}/missing.pem"], 2, "not found"),
    (["build", "--board", "unix", "--out", "{tmp}/f/x", "--mip-index"], 2, "expected one argument"),
])
def test_errors_are_one_line_with_the_right_status(tmp_path, args, status, text):
    res = upyhub(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert res.returncode == status, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("upyhub: error: ") and text in lines[0], res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr


def test_show_verbs_speak_json(tmp_path):
    from certhelpers import make_cert

    root = make_cert("JSON Root")
    (tmp_path / "r.pem").write_bytes(root.pem)
    for flag in (["-o", "json"], ["--output", "json"], ["--json"]):
        res = upyhub("certs", "inspect", tmp_path / "r.pem", *flag)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["certs"][0]["sha256"] == root.sha256
    res = upyhub("certs", "stage-local", "--flash", tmp_path / "f", "--active", tmp_path / "r.pem", "-o", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["seq"] == 1 and doc["certs"][0]["sha256"] == root.sha256
