# Bind AF_UNIX sockets outside the work dir and in the abstract namespace.
import socket

for addr in ("@OUTSIDE@/sock", "/tmp/@MARKER@.sock", "\0@MARKER@"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(addr)
        s.listen(1)
        print("bound", repr(addr))
    except OSError as exc:
        print("refused", repr(addr), exc)
