# Ignore SIGTERM/SIGINT/SIGHUP, leave a child that ignores them too, then hang.
import signal
import sys
import time

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
sys.modules.pop("posix", None)
import posix  # noqa: E402

if posix.fork() == 0:
    posix.execv(
        sys.executable,
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
            "@MARKER@",
        ],
    )
print("hanging", flush=True)
while True:
    time.sleep(0.05)
