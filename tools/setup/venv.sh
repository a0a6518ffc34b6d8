#!/usr/bin/env bash
# Create .venv/ with the pinned host dependencies and the upyhub CLI.
set -euo pipefail
cd "$(dirname "$0")/../.."
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    sudo_ apt-get update -qq && sudo_ apt-get install -y -qq python3-venv python3-pip >/dev/null
fi
[ -x .venv/bin/python ] || { echo "setup: creating .venv"; python3 -m venv .venv; }
echo "setup: installing the pinned host dependencies into .venv (pip; 1-3 min the first time, seconds after)"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]' 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
echo "setup: .venv ready (CLI: .venv/bin/upyhub)"
