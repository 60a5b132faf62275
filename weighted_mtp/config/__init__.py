"""Typed config schema, override translation, loading and validation."""

from pathlib import Path

#: The Hydra config tree (``conf/``): groups ``stage``, ``profile``, launcher presets, shapes.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
