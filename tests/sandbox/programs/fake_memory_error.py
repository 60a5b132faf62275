# Fake a verdict through stderr text: print what a MemoryError would, then fail plainly.
import sys

sys.stderr.write("Traceback (most recent call last):\nMemoryError\n")
sys.exit(1)
