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
// lwIP sized for a serial link (115200 baud: 11.5 KB/s), so that what TCP may have in flight always fits the
// UART's transmit buffer (board.py's TXBUF): MicroPython 1.25's network.PPP writes its frames with a blocking
// UART write, and a write that has to wait runs MicroPython's pending callbacks, among them PPP's own input
// (the UART's RXIDLE handler), re-entering lwIP in the middle of tcp_output. That corrupts the connection's
// segment lists and hangs the board in tcp_output until its watchdog resets it (seen on this image with
// lwIP's default windows and the UART's default 256-byte buffer). Two segments of 536 bytes in flight each
// way, twice that with a retransmission, PPP framing and escapes: under 2.5 KB. It also gives lwIP's memory
// back to the Python heap (MEM_SIZE 8000 -> 4000).
#define MEM_SIZE                                (4000)
#define TCP_MSS                                 (536)
#define TCP_WND                                 (2 * TCP_MSS)
#define TCP_SND_BUF                             (2 * TCP_MSS)
