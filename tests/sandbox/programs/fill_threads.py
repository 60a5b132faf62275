# Start threads until the limit (at most 2000; each sleeps).
import threading
import time

threads = []
try:
    for _ in range(2000):
        t = threading.Thread(target=time.sleep, args=(5,), daemon=True)
        t.start()
        threads.append(t)
except RuntimeError as exc:
    print("stopped", exc)
print("started", len(threads))
