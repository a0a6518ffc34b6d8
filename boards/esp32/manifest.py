# Frozen firmware for ESP32 boards: the port's own modules for the board being built, then
# upyhub's device package, firmware modules and this board module (frozen as `board`).
# Build (see README): make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=<this file>
# boot.py and main.py stay files on the flash (provisioning writes them): a frozen main.py
# would shadow the flash's copy forever.
include("$(BOARD_DIR)/manifest.py")  # includes umqtt.simple from micropython-lib on ESP32

package("iothub", base_path="../../lib")
module("app.py", base_path="../../firmware")
module("board.py")
