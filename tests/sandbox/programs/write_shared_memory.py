# Write to the host's shared scratch places: /dev/shm, /var/tmp, /tmp.
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

for d in ("/dev/shm", "/var/tmp", "/tmp", "/dev"):
    try:
        fd = posix.open(f"{d}/@MARKER@", posix.O_WRONLY | posix.O_CREAT, 0o666)
        posix.write(fd, b"x")
        print("wrote", d)
    except OSError as exc:
        print("refused", d, exc)
