"""The one error type the CLI turns into a one-line message and exit status 2."""


class UsageError(Exception):
    """Bad input from the user: the message is shown as is, one line, no traceback.

    Messages must never contain a key, a token or a connection string.
    """
