# Try to gain privileges: unshare a new user namespace, mount, chroot (through libc).
import sys

for name in ("ctypes", "_ctypes"):
    sys.modules.pop(name, None)
import ctypes  # noqa: E402

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
print("unshare user", libc.unshare(CLONE_NEWUSER), ctypes.get_errno())
print("unshare mount", libc.unshare(CLONE_NEWNS), ctypes.get_errno())
print("mount", libc.mount(b"none", b"/usr", b"tmpfs", 0, None), ctypes.get_errno())
print("chroot", libc.chroot(b"/work"), ctypes.get_errno())
