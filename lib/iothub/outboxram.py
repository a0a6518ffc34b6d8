# The outbox's contract (iothub.outbox) in RAM only, for boards without room on flash (config
# outbox: "ram"): messages survive reconnects, not resets.


def _full(msg):
    from iothub.outbox import Full  # the same exception as the flash outbox's (loaded only to raise it)

    return Full(msg)


class RamOutbox:
    def __init__(self, max_bytes, full="drop-oldest", log=print):
        self.max_bytes = max_bytes
        self.refuse = full == "refuse"
        self.log = log
        self.dropped = 0
        self.bytes = 0
        self._q = []  # [ref, topic, body]
        self._ref = 0
        self._cur = 0

    @property
    def depth(self):
        return len(self._q)

    def append(self, topic, body):
        n = len(topic) + len(body) + 32  # what a queued message costs, roughly, with its list
        while self._q and self.bytes + n > self.max_bytes:
            if self.refuse:
                raise _full("outbox full (%d messages, %d bytes): message refused" % (len(self._q), self.bytes))
            old = self._q.pop(0)
            self.bytes -= len(old[1]) + len(old[2]) + 32
            self._cur = max(0, self._cur - 1)
            self.dropped += 1
            if self.dropped % 10 == 1:  # not a line per message during a long outage
                self.log("outbox full: dropped the oldest message (%d so far)" % self.dropped)
        if n > self.max_bytes:
            raise _full("message of %d bytes is larger than the outbox (%d bytes)" % (n, self.max_bytes))
        self._ref += 1
        self._q.append([self._ref, topic, body])
        self.bytes += n

    def next(self):
        if self._cur >= len(self._q):
            return None
        m = self._q[self._cur]
        self._cur += 1
        return m[0], m[1], m[2]

    def ack(self, ref):
        if self._q and self._q[0][0] == ref:
            old = self._q.pop(0)
            self.bytes -= len(old[1]) + len(old[2]) + 32
            self._cur = max(0, self._cur - 1)

    def rewind(self):
        self._cur = 0

    def close(self):
        pass
