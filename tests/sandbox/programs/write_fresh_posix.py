# Create files outside the work dir with a freshly imported posix module.
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

for path in ("@OUTSIDE@/posix.txt", "/tmp/@MARKER@", "/usr/@MARKER@", "/@MARKER@"):
    try:
        fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT, 0o666)
        posix.write(fd, b"@MARKER@")
        print("wrote", path)
    except OSError as exc:
        print("refused", path, exc)
