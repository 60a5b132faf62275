# Reach the evaluator's session keyring (possessed by every process that inherits it,
# whatever its uid): read its id, add a key to it, request one, list /proc/keys.
import sys

for name in ("ctypes", "_ctypes"):
    sys.modules.pop(name, None)
import ctypes  # noqa: E402
import errno  # noqa: E402
import platform  # noqa: E402

NR = {"x86_64": (250, 248, 249), "aarch64": (219, 217, 218)}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SESSION, GET_KEYRING_ID, READ = -3, 0, 11


def call(what, nr, *args):
    ctypes.set_errno(0)
    rv = libc.syscall(nr, *args)
    err = ctypes.get_errno()
    print(what, "refused" if rv < 0 else "ALLOWED", errno.errorcode.get(err, err), rv)
    return rv


call("keyctl", NR[0], GET_KEYRING_ID, ctypes.c_long(SESSION), 0)
buf = ctypes.create_string_buffer(4096)
call("keyctl_read", NR[0], READ, ctypes.c_long(SESSION), buf, 4096)
call("add_key", NR[1], b"user", b"@MARKER@", b"data", 4, ctypes.c_long(SESSION))
call("request_key", NR[2], b"user", b"@MARKER@", None, 0)
try:
    with open("/proc/keys") as f:
        print("proc_keys", f.read().count("\n"), "lines")
except OSError as exc:
    print("proc_keys refused", exc)
