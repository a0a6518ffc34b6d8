# Why something failed, in words a log reader knows: errno names instead of numbers (ports'
# errno.errorcode tables are partial), mbed TLS codes by name, never an empty message.
_NAMES = {1: "EPERM", 2: "ENOENT", 5: "EIO", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES",
          17: "EEXIST", 19: "ENODEV", 21: "EISDIR", 22: "EINVAL", 27: "EFBIG", 28: "ENOSPC", 30: "EROFS",
          32: "EPIPE", 103: "ECONNABORTED", 104: "ECONNRESET", 107: "ENOTCONN", 110: "ETIMEDOUT",
          111: "ECONNREFUSED", 113: "EHOSTUNREACH", 115: "EINPROGRESS", 116: "ETIMEDOUT", 118: "EHOSTUNREACH"}
_MEANING = {"ENOSPC": "flash full", "EROFS": "flash read-only", "ENOMEM": "out of memory",
            "ECONNRESET": "connection reset", "ECONNREFUSED": "connection refused", "ETIMEDOUT": "timed out",
            "EHOSTUNREACH": "host unreachable", "ECONNABORTED": "connection aborted", "EIO": "I/O error",
            "EPIPE": "connection closed", "ENOTCONN": "not connected"}
_TLS = {-0x7280: "the server closed the connection during TLS (MBEDTLS_ERR_SSL_CONN_EOF)",
        -0x7880: "the server closed the TLS session (close_notify)",
        -0x7780: "fatal TLS alert from the server", -0x7200: "not TLS (invalid record)",
        -0x7900: "TLS handshake failure", -0x2700: "certificate verification failed",
        -0x7000: "TLS timeout", -0x6E00: "unsupported TLS version"}


def errno_name(n):
    try:
        import errno

        name = errno.errorcode.get(n)
        if name:
            return name
    except (ImportError, AttributeError):
        pass
    return _NAMES.get(n)


def of(e):
    # One line: "ENOSPC (flash full)", "ValueError: ...", never just a number or nothing.
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], str):
        return e.args[0]  # our own: already words
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        n = e.args[0]
        extra = (": " + str(e.args[1])) if len(e.args) > 1 else ""
        if n < 0:
            return _TLS.get(n, "TLS error -0x%04X" % -n) + extra
        name = errno_name(n)
        if name:
            m = _MEANING.get(name)
            return (name + " (" + m + ")" if m else name) + extra
        return "OSError %d" % n + extra
    text = str(e)
    return type(e).__name__ + (": " + text if text else "")
