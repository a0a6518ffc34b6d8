# The test image for MicroPython's qemu port (Cortex-M3, tools/setup/qemu.sh): the device package and
# firmware modules as every board freezes them (boards/manifest_common.py) and umqtt.simple, as the unix
# board's manifest takes it. Nothing else: the frozen size of this image is the firmware's.
include("../../boards/manifest_common.py")
package("umqtt", base_path="../../build/umqtt")
