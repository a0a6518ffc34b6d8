# MicroPython rp2 board definition (cmake -DMICROPY_BOARD_DIR=<this folder>): a Raspberry Pi Pico (RP2040,
# 2 MB flash) whose network is a PPP link over UART0 to a serial or cellular modem. RPI_PICO plus lwIP:
# rp2 builds socket, tls and select only for boards with a network (tools/setup/rp2.sh builds it).
set(PICO_BOARD "pico")
set(PICO_PLATFORM "rp2040")
set(MICROPY_PY_LWIP ON)
