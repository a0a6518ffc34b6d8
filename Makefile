# upyhub: `make demo` runs the main job, `make test` runs the tests.
# Both set up what they need (apt + pip on Debian 12/13) and are no-ops when nothing changed.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
MP := build/micropython
MP32 := build/micropython-32
MP32_FROZEN := build/micropython-32-frozen.stamp
QEMU := build/qemu/.stamp
RP2 := build/rp2/.stamp
UMQTT := build/umqtt/umqtt/simple.py
MPY_STAMP := build/mpy/.stamp
DEVICE_SRC := $(shell find lib firmware boards -name '*.py' 2>/dev/null)

.PHONY: setup test demo bench clean distclean
# The demo needs the host tools, the unix port and the board tree; the tests need every build.
DEMO_NEEDS := $(BIN)/.stamp $(MP) $(UMQTT) $(MPY_STAMP)
setup: $(DEMO_NEEDS) $(MP32) $(MP32_FROZEN) $(QEMU) $(RP2)

$(BIN)/.stamp: pyproject.toml tools/setup/venv.sh
	bash tools/setup/venv.sh
	touch $@

$(MP): tools/setup/micropython.sh
	bash tools/setup/micropython.sh
	@test -x $(MP)

# 32-bit, with a board's mbed TLS config: the heap-budget test runs the firmware on it.
$(MP32): tools/setup/micropython32.sh | $(MP)
	bash tools/setup/micropython32.sh
	@test -x $(MP32)

# The same port with the device package, umqtt.simple and the unix board module frozen in
# (boards/unix/manifest.py): build/micropython-32-frozen. Frozen again when a device source changes.
$(MP32_FROZEN): tools/setup/micropython32.sh $(UMQTT) $(DEVICE_SRC) | $(MP32)
	bash tools/setup/micropython32.sh frozen
	@test -x build/micropython-32-frozen
	touch $@

# MicroPython's bare-metal qemu port (Cortex-M3) with the same modules frozen: tests/qemu runs on it.
$(QEMU): tools/setup/qemu.sh tests/qemu/manifest.py $(UMQTT) $(DEVICE_SRC) | $(MP32)
	bash tools/setup/qemu.sh
	touch $@

# MicroPython's rp2 port for a Pico with a PPP modem (boards/rp2_pico_ppp), the same modules frozen, and the
# emulator that runs it (tools/pico, rp2040js): tests/rp2 runs the firmware on it. Built again when a frozen
# source changes; mbed TLS's sources come with the 32-bit port's set-up.
$(RP2): tools/setup/rp2.sh tools/pico/package.json tools/pico/package-lock.json $(UMQTT) $(DEVICE_SRC) \
		$(wildcard boards/rp2_pico_ppp/*) | $(MP32) $(BIN)/.stamp
	bash tools/setup/rp2.sh
	touch $@

$(UMQTT): tools/setup/umqtt.py
	$(PY) tools/setup/umqtt.py

# The tree a board receives: every device-side .py compiled with mpy-cross.
$(MPY_STAMP): $(BIN)/.stamp $(UMQTT) $(DEVICE_SRC)
	$(BIN)/upyhub build --board unix --out build/mpy --quiet
	touch $@

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(DEMO_NEEDS)
	$(BIN)/python -m upyhub.demo

bench: setup
	$(BIN)/python -m upyhub.bench

clean:
	rm -rf build/mpy build/umqtt .pytest_cache

distclean: clean
	rm -rf build $(VENV)
