# Re-import ctypes (the guard hides it) and fork + exec through libc directly.
import sys

for name in ("ctypes", "_ctypes"):
    sys.modules.pop(name, None)
import ctypes  # noqa: E402

libc = ctypes.CDLL(None)
if libc.fork() == 0:
    args = [sys.executable, "-c", "import time; time.sleep(60)", "@MARKER@"]
    argv = (ctypes.c_char_p * (len(args) + 1))(*[a.encode() for a in args], None)
    libc.execv(args[0].encode(), argv)
    libc._exit(1)
print("parent exits")
