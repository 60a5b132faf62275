# The wrong answer is being returned when the finally block raises SystemExit(0).
def add(a, b):
    try:
        return a - b
    finally:
        raise SystemExit(0)
