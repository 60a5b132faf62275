"""Typed config schema, override translation, loading and validation."""
