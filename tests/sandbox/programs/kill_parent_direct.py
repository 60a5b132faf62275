# Kill the evaluator: SIGKILL the parent, the evaluator's host pid and pid 1.
import os
import signal

for pid in (os.getppid(), int("@EVALUATOR_PID@"), 1):
    os.kill(pid, signal.SIGKILL)
print("survived")
