"""``params.json``: the MTP shape beside a model's tensors (Meta, safetensors and DCP
directories all carry it). Read here, below :mod:`~weighted_mtp.models.formats` and
:mod:`~weighted_mtp.models.dcp`, so neither imports the other for it."""

from __future__ import annotations

import json
from pathlib import Path

from weighted_mtp.errors import UserError
from weighted_mtp.models.mtp import ModelArgs

PARAMS_FILE = "params.json"


def read_params_json(path: Path) -> ModelArgs:
    """The :class:`ModelArgs` in ``path/params.json`` (exit 2 naming the file if it is
    missing or malformed)."""
    f = path / PARAMS_FILE
    if not f.exists():
        raise UserError(f"{f} is missing: a Meta-format model directory needs params.json")
    try:
        return ModelArgs.from_params_json(f)
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"{f} is not a valid params.json: {e}") from e
