# The qemu port has no TLS: this `tls` only lets shared test preludes import it. Any use fails.
PROTOCOL_TLS_CLIENT = 0
CERT_REQUIRED = 2


class SSLContext:
    def __init__(self, *a, **k):
        raise OSError("no TLS on the qemu port")
