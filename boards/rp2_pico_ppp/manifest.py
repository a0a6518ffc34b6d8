# Frozen firmware for a Raspberry Pi Pico with a PPP modem (boards/rp2_pico_ppp, built by tools/setup/rp2.sh):
# the rp2 port's own modules (_boot.py mounts littlefs at /, rp2.py), umqtt.simple from its PyPI package
# (build/umqtt, as `make setup` fetches it), then upyhub's device package and firmware modules
# (boards/manifest_common.py) and this board module (frozen as `board`). Nothing from micropython-lib:
# the rp2 port's default manifest require()s drivers (onewire, dht, neopixel) nothing here uses.
freeze("$(PORT_DIR)/modules")
package("umqtt", base_path="../../build/umqtt")
include("../manifest_common.py")
module("board.py")
