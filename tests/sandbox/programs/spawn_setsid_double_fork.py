# Leave a daemon running: fork, setsid, fork again, exec a sleeper (fresh posix).
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

if posix.fork() == 0:
    posix.setsid()
    if posix.fork() == 0:
        sleeper = "import time; time.sleep(60)"
        posix.execv(sys.executable, [sys.executable, "-c", sleeper, "@MARKER@"])
    posix._exit(0)
print("parent exits")
