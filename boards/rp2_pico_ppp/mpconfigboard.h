// A Raspberry Pi Pico with a PPP modem on UART0: RPI_PICO's flash layout plus MicroPython's network
// stack (lwIP, socket, tls) and network.PPP (extmod/network_ppp_lwip.c). Board module: board.py here.
#define MICROPY_HW_BOARD_NAME                   "Raspberry Pi Pico (PPP modem)"
#define MICROPY_HW_FLASH_STORAGE_BYTES          (1408 * 1024)
#define MICROPY_PY_NETWORK                      (1)
#define MICROPY_PY_NETWORK_PPP_LWIP             (1)
#define MICROPY_PY_NETWORK_HOSTNAME_DEFAULT     "upyhub-pico"
// lwIP's PPP sends no LCP echoes by default, so a peer that went silent would never be noticed: one every
// 10 s, and the link is declared dead after 3 unanswered (board.py's "peer gone").
#define LCP_ECHOINTERVAL                        (10)
#define LCP_MAXECHOFAILS                        (3)
