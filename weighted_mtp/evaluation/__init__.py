"""Evaluation of generated programs: sandboxed execution (``sandbox``) and pass@k (``passk``)."""
