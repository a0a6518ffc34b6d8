#!/usr/bin/env bash
# Make the MicroPython unix port reachable at build/micropython.
# 1. a micropython >= 1.22 already on PATH is used as it is (symlinked);
# 2. on Debian 13+, `apt-get install micropython` gives one;
# 3. otherwise Debian trixie's source package is built here (Debian 12 cannot run
#    trixie's binary: glibc), cached under build/mp-src and rebuilt only when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=$PWD/build
OUT=$BUILD/micropython
mkdir -p "$BUILD"

version_ok() {  # $1 = binary; true when it is MicroPython >= 1.22 with tls and hashlib
    "$1" -c 'import sys, tls, hashlib
v = sys.implementation.version
sys.exit(0 if (v[0], v[1]) >= (1, 22) else 1)' >/dev/null 2>&1
}

if [ -x "$OUT" ] && version_ok "$OUT"; then exit 0; fi
rm -f "$OUT"

if command -v micropython >/dev/null 2>&1 && version_ok "$(command -v micropython)"; then
    ln -sf "$(command -v micropython)" "$OUT"; echo "micropython: using $(command -v micropython)"; exit 0
fi

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
major=$(cut -d. -f1 /etc/debian_version 2>/dev/null || echo 0)
case "$major" in ''|*[!0-9]*) major=0;; esac
if [ "$major" -ge 13 ]; then
    sudo_ apt-get update -qq && sudo_ apt-get install -y -qq micropython >/dev/null
    if version_ok /usr/bin/micropython; then ln -sf /usr/bin/micropython "$OUT"; exit 0; fi
fi

echo "micropython: building the unix port from Debian's source package (once, 1-2 min on 2 cores)"
need=()
for p in libmbedtls-dev libffi-dev pkg-config build-essential dpkg-dev xz-utils; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "micropython: apt-get install ${need[*]}"
    sudo_ apt-get update -qq && sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
fi

SRC=$BUILD/mp-src
if [ ! -d "$SRC/tree/ports/unix" ]; then
    echo "micropython: fetching Debian trixie's micropython source package"
    rm -rf "$SRC"; mkdir -p "$SRC/lists/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$SRC/sources.list"
    opts=(-o Dir::Etc::SourceList="$SRC/sources.list" -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists="$SRC/lists")
    sudo_ apt-get "${opts[@]}" update -qq
    (cd "$SRC" && sudo_ apt-get "${opts[@]}" source --download-only micropython >/dev/null 2>&1)
    orig=$(ls "$SRC"/micropython_*.orig.tar.xz | head -n1)
    deb=$(ls "$SRC"/micropython_*.debian.tar.xz | head -n1)
    mkdir -p "$SRC/tree"
    tar -xf "$orig" -C "$SRC/tree" --strip-components=1
    tar -xf "$deb" -C "$SRC/tree"
    (cd "$SRC/tree" && while read -r p; do
        case "$p" in ''|\#*) continue;; esac
        patch -p1 -s <"debian/patches/$p"
    done <debian/patches/series)
fi
echo "micropython: compiling mpy-cross and the unix port"
make -s -C "$SRC/tree/mpy-cross" -j2 >/dev/null
make -s -C "$SRC/tree/ports/unix" -j2 MICROPY_SSL_AXTLS=0 MICROPY_SSL_MBEDTLS=1 MICROPY_PY_BTREE=0 FROZEN_MANIFEST= >/dev/null
ln -sfn mp-src/tree/ports/unix/build-standard/micropython "$OUT"  # relative: build/ may move
version_ok "$OUT" || { echo "micropython: the build did not give a working unix port" >&2; exit 1; }
echo "micropython: $("$OUT" -c 'import sys; print(sys.version)')"
