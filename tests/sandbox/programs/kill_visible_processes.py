# SIGTERM then SIGKILL every process visible in /proc (fresh posix; not kill(-1)).
import signal
import sys

sys.modules.pop("posix", None)
import posix  # noqa: E402

me = posix.getpid()
for name in posix.listdir("/proc"):
    if name.isdigit() and int(name) != me:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                posix.kill(int(name), sig)
                print("signalled", name, sig)
            except OSError as exc:
                print("refused", name, exc)
