# Read the caller's temp dir, the project and its storage/ (fresh posix).
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

for path in ("@OUTSIDE@/secret.txt", "@REPO@/README.md", "@REPO@/storage", "/tmp", "/work/.."):
    try:
        print(path, posix.listdir(path))
    except OSError as exc:
        print(path, "listdir refused", exc)
    try:
        fd = posix.open(path, posix.O_RDONLY)
        print(path, posix.read(fd, 1 << 20))
    except OSError as exc:
        print(path, "read refused", exc)
