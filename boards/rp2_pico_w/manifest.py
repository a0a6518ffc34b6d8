# Frozen firmware for the Raspberry Pi Pico W: the board's own modules (networking bundle,
# CYW43 support), umqtt.simple, then upyhub's device package, firmware modules and this
# board module (frozen as `board`).
# Build (see README): make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=<this file>
# boot.py and main.py stay files on the flash (provisioning writes them): a frozen main.py
# would shadow the flash's copy forever.
include("$(BOARD_DIR)/manifest.py")
require("umqtt.simple")

package("iothub", base_path="../../lib")
module("app.py", base_path="../../firmware")
module("board.py")
