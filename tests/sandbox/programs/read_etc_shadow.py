# Read /etc/shadow and /etc/passwd (fresh posix).
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

for path in ("/etc/shadow", "/etc/passwd", "/etc/sudoers"):
    try:
        fd = posix.open(path, posix.O_RDONLY)
        print(path, posix.read(fd, 1 << 20))
    except OSError as exc:
        print(path, "refused", exc)
