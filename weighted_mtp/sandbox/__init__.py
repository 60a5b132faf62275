"""Run untrusted Python programs: the bottom layer under data verification and evaluation.

``runner`` (one sandboxed process per run), ``limits`` (rlimits, timeouts, sizes),
``isolation`` (the OS layer: the interface and ``none``), ``bwrap`` (bubblewrap) and
``guard.py`` (the Python-level inner layer, read as text and run inside the child).
"""
