# Write outside the work dir with pathlib, after recovering the unguarded open.
import builtins
import io
import pathlib

orig = next(
    c.cell_contents
    for c in builtins.open.__closure__
    if callable(c.cell_contents) and getattr(c.cell_contents, "__name__", "") == "open"
)
builtins.open = io.open = orig
pathlib.Path("@OUTSIDE@/pathlib.txt").write_text("@MARKER@")
print("wrote")
