# Frozen firmware for ESP32 boards: the port's own modules for the board being built, then
# upyhub's device package and firmware modules (boards/manifest_common.py) and this board
# module (frozen as `board`).
# Build (see README): make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=<this file>
include("$(BOARD_DIR)/manifest.py")  # includes umqtt.simple from micropython-lib on ESP32
include("../manifest_common.py")
module("board.py")
