# List and read /root and /home (ssh keys, shell history, credentials).
import os

for top in ("/root", "/home", "/root/.ssh", "/root/.bash_history"):
    try:
        print(top, os.listdir(top))
    except OSError as exc:
        print(top, "refused", exc)
    try:
        print(top, open(top).read())  # noqa: SIM115
    except OSError as exc:
        print(top, "refused", exc)
