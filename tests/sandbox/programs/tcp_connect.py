# Open a TCP connection to the test's listener on 127.0.0.1 (and ::1, and UDP).
import socket

for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(1.0)
        s.connect((host, int("@PORT@")))
        s.sendall(b"@MARKER@")
        print("connected", host)
    except OSError as exc:
        print("refused", host, exc)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"@MARKER@", ("127.0.0.1", int("@PORT@")))
    print("udp sent")
except OSError as exc:
    print("udp refused", exc)
