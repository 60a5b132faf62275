# Leave a process running: subprocess.Popen with a freshly imported _posixsubprocess.
import subprocess
import sys

sys.modules.pop("_posixsubprocess", None)
import _posixsubprocess  # noqa: E402

subprocess._posixsubprocess = _posixsubprocess
subprocess._fork_exec = _posixsubprocess.fork_exec  # bound when subprocess was imported
subprocess._USE_POSIX_SPAWN = False
p = subprocess.Popen(
    ["/bin/sh", "-c", f"{sys.executable} -c 'import time; time.sleep(60)' @MARKER@ &"]
)
print("spawned", p.pid, p.wait())
