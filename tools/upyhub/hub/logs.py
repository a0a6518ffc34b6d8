"""The hub's log: one line per event, nothing a client sent can break a line, floods summarised.

- Escaping: every control character (CR, LF, ESC, ...) and Unicode line separator in a formatted
  record, wherever it came from (a client id, a URL path, an exception text), is written as \\xNN or
  \\uNNNN, so no client can forge a log line or drive the terminal.
- Rate limit: each message template may write BURST lines per WINDOW seconds; further lines of that
  template are counted and summarised in one line when the window closes ("... 1043 more like this in
  the last 10 s"). flush() (called every second by the hub) writes the summaries of closed windows.
"""
import logging
import re
import sys
import threading
import time

BURST = 40
WINDOW = 10.0
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text):
    return _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group()) if ord(m.group()) < 0x100
                        else "\\u%04x" % ord(m.group()), text)


class OneLineFormatter(logging.Formatter):
    def format(self, record):
        return escape(super().format(record))

    def formatException(self, ei):  # a traceback still ends up on the record's one line, escaped
        return "%s: %s" % (ei[0].__name__, ei[1])


class FloodFilter(logging.Filter):
    def __init__(self, burst=BURST, window=WINDOW, clock=time.monotonic):
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        self._windows = {}  # template -> [window start, lines written, lines suppressed, level, logger]
        self._lock = threading.Lock()
        self.emit_summary = None  # set by install(): writes a summary record

    def filter(self, record):
        if getattr(record, "summary", False):
            return True
        now = self.clock()
        key = (record.name, str(record.msg))
        with self._lock:
            w = self._windows.get(key)
            if w is None or now - w[0] >= self.window:
                self._close(key, w)
                w = self._windows[key] = [now, 0, 0, record.levelno, record.name]
            if w[1] < self.burst:
                w[1] += 1
                return True
            w[2] += 1
            return False

    def _close(self, key, w):
        if w and w[2] and self.emit_summary:
            self.emit_summary(w[4], w[3], "... %d more like %r in the last %d s (log rate limit)"
                              % (w[2], key[1], self.window))

    def flush(self):
        now = self.clock()
        with self._lock:
            for key, w in list(self._windows.items()):
                if now - w[0] >= self.window:
                    self._close(key, w)
                    del self._windows[key]


_filter = None


def install(verbose=False, stream=None):
    """The process's logging: escaped one-line records, rate-limited per template, to stderr."""
    global _filter
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S"))
    _filter = FloodFilter()
    handler.addFilter(_filter)

    def summary(name, level, text):
        record = logging.getLogger(name).makeRecord(name, level, __file__, 0, text, (), None)
        record.summary = True
        handler.handle(record)

    _filter.emit_summary = summary
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # amqtt's own logs can show session details; the hub logs what matters itself
    for name in ("amqtt", "transitions", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return _filter


def flush():
    if _filter is not None:
        _filter.flush()
