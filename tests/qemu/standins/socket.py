# The qemu port has no network: this `socket` only lets shared test preludes import it. Any use fails.
def socket(*a, **k):
    raise OSError("no network on the qemu port")


def getaddrinfo(*a, **k):
    raise OSError("no network on the qemu port")
