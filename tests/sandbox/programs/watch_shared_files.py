# Interfere with the host through the shared read-only files: flock a /usr file (blocking
# whoever locks it next), inotify / dnotify on /usr (seeing other sandboxes' opens).
import sys

for name in ("ctypes", "_ctypes"):
    sys.modules.pop(name, None)
import ctypes  # noqa: E402
import fcntl  # noqa: E402
import os  # noqa: E402

target = os.__file__
fd = os.open(target, os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("flock LOCKED")
except OSError as exc:
    print("flock refused", exc.errno)
libc = ctypes.CDLL(None, use_errno=True)
ino = libc.inotify_init1(0)
print("inotify_init1", "OPENED" if ino >= 0 else "refused", ctypes.get_errno())
if ino >= 0:
    print("inotify watch", libc.inotify_add_watch(ino, os.path.dirname(target).encode(), 0xFFF))
dfd = os.open(os.path.dirname(target), os.O_RDONLY)
try:
    fcntl.fcntl(dfd, 1026, 1)  # F_NOTIFY, DN_ACCESS
    print("dnotify WATCHING")
except OSError as exc:
    print("dnotify refused", exc.errno)
