# What every board's frozen firmware takes from this repo: everything in lib/ and the firmware
# modules of firmware/ (boot.py and main.py stay files on the flash: a frozen main.py would
# shadow the flash's copy forever). Included by boards/<board>/manifest.py; MicroPython's
# manifest tool runs an included manifest from its own folder, so paths are relative to boards/.
import os

for name in sorted(n for n in os.listdir("../lib") if not n.startswith((".", "__pycache__"))):
    if os.path.isdir("../lib/" + name):
        package(name, base_path="../lib")
    elif name.endswith(".py"):
        module(name, base_path="../lib")
for name in sorted(os.listdir("../firmware")):
    if name.endswith(".py") and name not in ("boot.py", "main.py"):
        module(name, base_path="../firmware")
