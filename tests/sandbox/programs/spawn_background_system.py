# Leave a process running: `&` through a fresh posix.system.
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

cmd = f"{sys.executable} -c 'import time; time.sleep(60)' @MARKER@ &"
print("system", posix.system(cmd))
