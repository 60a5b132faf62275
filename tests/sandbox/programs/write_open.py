# Write outside the work dir with the builtin open.
open("@OUTSIDE@/open.txt", "w").write("@MARKER@")  # noqa: SIM115
print("wrote")
