# Flood stderr with 64 MiB (beyond RLIMIT_FSIZE and the output cap), then print the answer.
import sys

line = "e" * 1023 + "\n"
for _ in range(64 * 1024):
    sys.stderr.write(line)
print("answer 42")
