# Allocate memory until something gives.
chunks = []
while True:
    chunks.append(bytearray(50 << 20))
