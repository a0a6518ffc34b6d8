"""The one way tests wait for a condition: poll until a generous deadline (no timed assertions)."""
import time


def wait_until(fn, timeout=90, what="condition", interval=0.2, ignore=()):
    """fn()'s first true value; exceptions of the types in `ignore` count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s (%ss)" % (what, timeout))
        time.sleep(interval)
