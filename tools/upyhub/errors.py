"""The errors the CLI turns into one line on stderr (no traceback) and an exit status.

    UpyhubError   a failure at run time: the hub is down, the board does not answer, the hub refused
                  (exit status 1)
    UsageError    bad input from the user: a wrong option, a missing file, a bad device id (exit status 2)

Library code raises these (or its own subclasses); only the CLI turns them into exit statuses.
Messages must never contain a key, a token or a connection string.
"""


class UpyhubError(Exception):
    """Something failed at run time; the message is shown as is, one line."""

    exit_status = 1


class UsageError(UpyhubError):
    """Bad input from the user: the message is shown as is, one line, no traceback."""

    exit_status = 2


def network_reason(exc):
    """A short, friendly reason for a network error: unresolvable name, refused, timeout, ..."""
    import socket
    import ssl

    if isinstance(exc, socket.gaierror):
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5), getattr(socket, "EAI_AGAIN", -3)):
            return "the name does not resolve (unknown host, or no DNS here)"
        return "name lookup failed (%s)" % (exc.strerror or exc)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out (nothing answered)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing is listening there)"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "the connection was closed by the other side"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate check failed (%s)" % (exc.verify_message or exc.reason)
    if isinstance(exc, ssl.SSLError):
        return "TLS failed (%s)" % (exc.reason or exc)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
