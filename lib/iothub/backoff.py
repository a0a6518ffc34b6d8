# Bounded exponential backoff with jitter, so a fleet that lost its hub does not come back
# in lock-step. Delay n: a random value in [d/2, d], d = min(cap, base * 2**n) ("equal jitter").
try:
    from random import getrandbits
except ImportError:  # some ports build without random
    from os import urandom

    def getrandbits(n):
        return int.from_bytes(urandom(4), "big") & ((1 << n) - 1)


class Backoff:
    def __init__(self, base_ms=1000, cap_ms=60000):
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self.attempt = 0

    def reset(self):
        self.attempt = 0

    def next_ms(self):
        d = self.base_ms << min(self.attempt, 20)
        if d > self.cap_ms:
            d = self.cap_ms
        self.attempt += 1
        half = d // 2
        return half + (getrandbits(16) * (d - half)) // 0xFFFF
