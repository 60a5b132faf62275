# Leave children running: a fresh posix.fork whose child execs a sleeper; parent exits.
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

for _ in range(3):
    if posix.fork() == 0:
        posix.execv(
            sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "@MARKER@"]
        )
print("parent exits")
