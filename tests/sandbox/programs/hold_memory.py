# Hold memory that RLIMIT_AS does not count: memfd pages, SysV shared memory and message
# queues (pages held by an fd or an IPC id, not by a mapping), files in /dev/shm, /tmp and
# /work, pipe and socket buffers; then fill the address space itself. Prints what it held.
import sys

for name in ("ctypes", "_ctypes"):
    sys.modules.pop(name, None)
sys.modules.pop("posix", None)
import ctypes  # noqa: E402
import posix  # noqa: E402
import socket  # noqa: E402

sys.stdout.reconfigure(line_buffering=True)  # what it held so far survives a kill

GOAL = 2 << 30  # per channel: far beyond any limit
CHUNK = 16 << 20
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
held = {}
keep = []


def note(channel, n):
    held[channel] = held.get(channel, 0) + n


def write_all(fd, limit):
    block = b"m" * (1 << 20)
    n = 0
    try:
        while n < limit:
            n += posix.write(fd, block)
    except OSError:
        pass
    return n


# memfd: up to half the descriptors, each filled to RLIMIT_FSIZE, all kept open
try:
    while held.get("memfd", 0) < GOAL and len(keep) < 120:
        fd = posix.memfd_create("hold")
        keep.append(fd)
        if write_all(fd, CHUNK) == 0:
            break
        note("memfd", posix.fstat(fd).st_size)
except OSError as exc:
    print("memfd refused", exc)
print("memfd held", held.get("memfd", 0))

# SysV shared memory: segments outlive their mapping (shmdt) until IPC_RMID
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
seg = 64 << 20
while held.get("shm", 0) < GOAL:
    shmid = libc.shmget(IPC_PRIVATE, ctypes.c_size_t(seg), IPC_CREAT | 0o600)
    if shmid < 0:
        print("shmget refused errno", ctypes.get_errno())
        break
    addr = libc.shmat(shmid, None, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        print("shmat refused errno", ctypes.get_errno())
        break
    ctypes.memset(addr, 1, seg)
    libc.shmdt(ctypes.c_void_p(addr))
    note("shm", seg)
print("shm held", held.get("shm", 0))

# SysV message queues: 16 KiB each by default, 32000 queues
msg = ctypes.create_string_buffer(8 + 8192)
ctypes.memmove(msg, ctypes.byref(ctypes.c_long(1)), 8)
for _ in range(32000):
    qid = libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600)
    if qid < 0:
        print("msgget refused errno", ctypes.get_errno())
        break
    while libc.msgsnd(qid, msg, 8192, 0o4000) == 0:  # IPC_NOWAIT
        note("msg", 8192)
    if held.get("msg", 0) >= GOAL:
        break
print("msg held", held.get("msg", 0))

# files in shared and private tmpfs places
for d in ("/dev/shm", "/tmp", "/work"):
    i = 0
    while held.get(d, 0) < GOAL:
        try:
            fd = posix.open(f"{d}/@MARKER@-{i}", posix.O_WRONLY | posix.O_CREAT, 0o600)
        except OSError as exc:
            print(d, "refused", exc)
            break
        n = write_all(fd, CHUNK)
        posix.close(fd)
        note(d, n)
        i += 1
        if n < CHUNK:
            break
    print(d, "held", held.get(d, 0))

# pipe and socket buffers, as many as descriptors allow
pipes = []
try:
    while True:
        r, w = posix.pipe()
        pipes += [r, w]
        try:
            import fcntl

            fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        except OSError:
            pass
        posix.set_blocking(w, False)
        note("pipe", write_all(w, 1 << 20))
        if len(pipes) > 120:
            break
except OSError:
    pass
print("pipe held", held.get("pipe", 0))
socks = []
try:
    while True:
        a, b = socket.socketpair()
        socks += [a, b]
        a.setblocking(False)
        try:
            while True:
                note("socket", a.send(b"s" * 65536))
        except OSError:
            pass
except OSError:
    pass
print("socket held", held.get("socket", 0))

# finally the address space itself
chunks = []
try:
    while True:
        chunks.append(bytearray(b"a") * CHUNK)  # written: every page touched
        note("anonymous", CHUNK)
except MemoryError:
    pass
print("anonymous held", held.get("anonymous", 0))
print("held total", sum(held.values()))
