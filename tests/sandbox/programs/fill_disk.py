# Fill the disk: write 1 MiB files in the work dir until writing fails (at most 2 GiB).
import os

written = 0
block = b"x" * (1 << 20)
try:
    for i in range(2048):
        with open(f"fill-{i}", "wb") as f:
            f.write(block)
        written += len(block)
except OSError as exc:
    print("stopped", exc)
print("written", written, os.getcwd())
