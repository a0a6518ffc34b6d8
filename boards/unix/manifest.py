# Frozen firmware for the MicroPython unix port (build/micropython-32-frozen, made by
# tools/setup/micropython32.sh): umqtt.simple from its PyPI package (build/umqtt, as `make setup`
# fetches it), then upyhub's device package and firmware modules (boards/manifest_common.py, the list
# every board freezes) and this board module (frozen as `board`). Nothing of the port's own: the
# unix port's default manifest (mip, ssl) is left out, as nothing here imports it.
package("umqtt", base_path="../../build/umqtt")
include("../manifest_common.py")
module("board.py")
