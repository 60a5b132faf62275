# Open descriptors until the limit (at most 100000).
import os

fds = []
try:
    for _ in range(100000):
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as exc:
    print("stopped", exc)
print("opened", len(fds))
