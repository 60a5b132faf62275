"""Generated documentation: the config field reference and the CLI reference.

``python -m weighted_mtp.docsgen OUT_DIR`` writes ``config.md`` and ``cli.md``; the docs
site builds them at build time (``docs/_hooks/reference.py``, a MkDocs hook), so neither
can drift from the schema, conf/ or the argument parsers.
"""
