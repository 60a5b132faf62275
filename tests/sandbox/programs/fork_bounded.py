# Exactly 200 fork attempts (fresh posix), each child a sleeper; count the successes.
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

ok = failed = 0
for _ in range(200):
    try:
        pid = posix.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        posix.execv(
            sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "@MARKER@"]
        )
    ok += 1
print("forked", ok, "failed", failed)
