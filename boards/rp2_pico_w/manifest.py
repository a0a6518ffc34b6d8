# Frozen firmware for the Raspberry Pi Pico W: the board's own modules (networking bundle,
# CYW43 support), umqtt.simple, then upyhub's device package and firmware modules
# (boards/manifest_common.py) and this board module (frozen as `board`).
# Build (see README): make -C ports/rp2 BOARD=RPI_PICO_W FROZEN_MANIFEST=<this file>
include("$(BOARD_DIR)/manifest.py")
require("umqtt.simple")
include("../manifest_common.py")
module("board.py")
