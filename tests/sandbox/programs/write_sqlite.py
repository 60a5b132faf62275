# Create databases outside the work dir with sqlite3 (a C extension: no guard sees it).
import sqlite3

for path in ("@OUTSIDE@/db.sqlite", "/tmp/@MARKER@.sqlite"):
    try:
        con = sqlite3.connect(path)
        con.execute("create table t (x)")
        con.commit()
        print("wrote", path)
    except sqlite3.Error as exc:
        print("refused", path, exc)
