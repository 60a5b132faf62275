"""What a checkpoint's metadata must look like before anything is used: ``state.json``'s
fields (:func:`check_state`), the decoded RNG state (:func:`check_rng`) and the saved
tensors' dtypes against the model's (:func:`check_dtypes`). Each refusal is a
CheckpointError naming the file and the field (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from weighted_mtp.training.checkpoint.files import VERSION, CheckpointError
from weighted_mtp.training.checkpoint.tensors import dtype_kind as kind


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# state.json fields: (check, what it must be, required)
STATE_FIELDS: dict[str, tuple[Any, str, bool]] = {
    "stage": (lambda v: isinstance(v, str), "a stage name (string)", True),
    "step": (lambda v: _is_int(v) and v >= 0, "an integer >= 0", True),
    "epoch": (_is_num, "a number", False),
    "world_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1", False),
    "sharded": (lambda v: isinstance(v, bool), "true or false", False),
    "value_head_config": (lambda v: v is None or isinstance(v, dict), "an object or null", False),
    "scheduler": (lambda v: isinstance(v, dict), "an object", True),
    "scaler": (lambda v: isinstance(v, dict), "an object", True),
    "sampler": (lambda v: isinstance(v, dict), "an object", True),
    "best_val_loss": (lambda v: v is None or _is_num(v), "a number or null", True),
    "best_step": (_is_int, "an integer", False),
    "val": (lambda v: isinstance(v, dict), "an object", False),
    "provenance": (lambda v: isinstance(v, dict), "an object", False),
    "plan": (lambda v: isinstance(v, dict), "an object", True),
    "relative_paths": (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "an object of strings",
        False,
    ),
    "optimizer": (lambda v: isinstance(v, dict), "an object", True),
    "rng": (lambda v: isinstance(v, dict), "an object", True),
}


def check_state(state_file: Path, meta: Any) -> None:
    """Raise CheckpointError naming the first field of ``state.json`` that is missing or
    of the wrong type."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"{state_file}: must be a JSON object, got {type(meta).__name__}")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{state_file}: format version {meta.get('version')}")
    for field, (ok, what, required) in STATE_FIELDS.items():
        if field not in meta:
            if required:
                raise CheckpointError(f"{state_file}: field {field!r} is missing")
            continue
        if not ok(meta[field]):
            raise CheckpointError(
                f"{state_file}: field {field!r} must be {what}, got {meta[field]!r:.80}"
            )


MT_WORDS = 624  # numpy's and python's Mersenne Twister state


def check_rng(state_file: Path, state: Any) -> None:
    """The decoded RNG state has the layout and dtypes ``set_rng_state`` needs."""
    where = f"{state_file} + rng.safetensors"

    def bad(field: str, what: str) -> CheckpointError:
        return CheckpointError(f"{where}: rng {field} must be {what}; use another checkpoint")

    if not isinstance(state, dict):
        raise bad("state", "an object")
    py = state.get("python")
    if not (
        isinstance(py, list)
        and len(py) == 3
        and _is_int(py[0])
        and isinstance(py[1], list)
        and len(py[1]) == MT_WORDS + 1
        and all(_is_int(x) and 0 <= x < 2**32 for x in py[1])
        and (py[2] is None or _is_num(py[2]))
    ):
        raise bad("python", "[version, 625 words, gauss]")
    np_state = state.get("numpy")
    if not (
        isinstance(np_state, list)
        and len(np_state) == 5
        and np_state[0] == "MT19937"
        and all(_is_int(x) for x in np_state[2:4])
        and _is_num(np_state[4])
    ):
        raise bad("numpy", "['MT19937', key, pos, has_gauss, cached]")
    key = np_state[1]
    if not (
        isinstance(key, torch.Tensor) and key.dtype == torch.int64 and key.shape == (MT_WORDS,)
    ):
        raise bad("numpy key", f"an I64 tensor of {MT_WORDS} values, got {_desc(key)}")
    torch_state = state.get("torch")
    if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8):
        raise bad("torch", f"a U8 tensor, got {_desc(torch_state)}")
    cuda = state.get("cuda", [])
    if not isinstance(cuda, list) or not all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda
    ):
        raise bad("cuda", "a list of U8 tensors")


def check_dtypes(
    saved: dict[str, torch.Tensor], model: dict[str, torch.Tensor], where: Path, prefix: str = ""
) -> None:
    """Each saved tensor has the kind of dtype (float, integer, ...) of the model's tensor
    of that name: a float tensor relabelled as integers (same bytes) is refused instead
    of being cast into garbage weights. Float precisions may differ (cast on load)."""
    for key, t in saved.items():
        target = model.get(key)
        if target is not None and kind(t.dtype) != kind(target.dtype):
            raise CheckpointError(
                f"{where}: tensor {prefix}{key} is {t.dtype}, the model's parameter is "
                f"{target.dtype}; the file's metadata was changed: use another checkpoint"
            )


def _desc(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"{v.dtype} {tuple(v.shape)}"
    return type(v).__name__
