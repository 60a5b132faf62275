# Exhaust kernel memory through inodes: empty files cost no disk blocks, only ~1 KiB of
# unswappable kernel memory each; create them in /work until the file system says no
# (at most 300000, about 1 s of the timeout).
import os
import time

created = 0
deadline = time.monotonic() + 3.0
try:
    os.mkdir("d")
    created += 1
    while created < 300000 and time.monotonic() < deadline:
        for _ in range(1000):
            fd = os.open(f"d/{created}", os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            created += 1
except OSError as exc:
    print("stopped", exc)
print("created", created)
