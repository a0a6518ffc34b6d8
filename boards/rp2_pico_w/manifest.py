# Frozen firmware for the Raspberry Pi Pico W: the board's own modules (networking bundle,
# CYW43 support), umqtt.simple, then upyhub's device package, firmware modules and this
# board module (frozen as `board`).
# Build (see README): make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=<this file>
# boot.py and main.py stay files on the flash (provisioning writes them): a frozen main.py
# would shadow the flash's copy forever.
include("$(BOARD_DIR)/manifest.py")
require("umqtt.simple")

# Everything in lib/ and firmware/ (MicroPython's manifest tool runs this from its own folder).
import os

for name in sorted(n for n in os.listdir("../../lib") if not n.startswith((".", "__pycache__"))):
    if os.path.isdir("../../lib/" + name):
        package(name, base_path="../../lib")
    elif name.endswith(".py"):
        module(name, base_path="../../lib")
for name in sorted(os.listdir("../../firmware")):
    if name.endswith(".py") and name not in ("boot.py", "main.py"):
        module(name, base_path="../../firmware")
module("board.py")
