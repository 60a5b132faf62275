"""Run untrusted Python programs: the bottom layer under data verification and evaluation.

``runner`` (one sandboxed process per run), ``limits`` (rlimits, timeouts, sizes),
``base`` (the isolation interface both layers share), ``isolation`` (the registry and
``none``), ``bwrap`` (bubblewrap), ``seccomp`` (its syscall deny list, as BPF), ``workfs``
(the inode-capped ``/work`` as root) and ``guard.py`` (the Python-level inner layer, read
as text and run inside the child).
"""
