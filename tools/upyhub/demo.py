"""`make demo` (stage 1, until the device session lands): mint a token on the unix port, verify it on the host."""
import base64
import os
import subprocess
import sys

from upyhub import paths, sas

HUB = "localhub.azure-devices.net"
DEVICE = "demo-device-1"


def main():
    key = base64.b64encode(os.urandom(32)).decode()  # a throwaway per-device key, never printed
    code = "from iothub import sas\nprint(sas.device_token(%r, %r, %r, ttl=300))" % (HUB, DEVICE, key)
    env = dict(os.environ, MICROPYPATH=str(paths.BUILD / "mpy" / "lib"))
    out = subprocess.run([paths.micropython(), "-X", "heapsize=32K", "-c", code], capture_output=True, text=True,
                         env=env)
    if out.returncode != 0:
        print("demo: the device library failed: %s" % out.stderr.strip().splitlines()[-1], file=sys.stderr)
        return 1
    token = out.stdout.strip()
    parsed = sas.parse(token)
    ok = parsed.valid_signature(base64.b64decode(key)) and not parsed.expired()
    print("device (MicroPython unix port, .mpy, 32K heap) minted a token for %s" % parsed.sr)
    print("  expires at se=%d (in 300 s); signature hidden" % parsed.se)
    print("host (CPython hmac) verification: %s" % ("valid" if ok else "INVALID"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
