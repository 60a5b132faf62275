# Flood stdout with 200 MB.
import sys

line = "y" * 1023 + "\n"
for _ in range(200 * 1024):
    sys.stdout.write(line)
