# Print PID 1's environment and command line (fresh posix: no guard).
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

for path in ("/proc/1/environ", "/proc/1/cmdline"):
    try:
        fd = posix.open(path, posix.O_RDONLY)
        print(path, posix.read(fd, 1 << 20))
    except OSError as exc:
        print(path, "refused", exc)
