# Write outside through a symlink created in the work dir (fresh posix).
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

posix.symlink("@OUTSIDE@/symlink.txt", "link")
fd = posix.open("link", posix.O_WRONLY | posix.O_CREAT, 0o666)
posix.write(fd, b"@MARKER@")
print("wrote")
