"""Rules for inputs that would otherwise fail late or write in the wrong place: the
experiment name as one directory name, seed ranges, ``dataset.max_length`` within reason
and the policy's context, a writable ``checkpoint.save_dir`` and a validation split that
is not the training file. Each adds a problem to the validation's :class:`Checker`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from weighted_mtp.config.validate import Checker


# bytes (UTF-8) of experiment.name: a directory name (file systems allow 255) that leaves
# room for a sweep job's suffix (weighted_mtp.sweep.naming, up to 97 characters)
NAME_MAX_BYTES = 200
SEED_MAX = 2**32 - 1  # numpy's and torch's seed range
MAX_LENGTH_CAP = 2**20  # tokens: far beyond any model this tool trains


def names(c: Checker) -> None:
    """``experiment.name`` is one directory of ``checkpoint.save_dir`` (and of MLflow's
    run): a single, bounded path component, so ``../../x`` cannot write outside storage/."""
    key = "experiment.name"
    name = c.get(key)
    if not isinstance(name, str) or name == "":
        return  # missing / empty: REQUIRED reports it
    bad = (
        f"is {len(name.encode())} bytes long (at most {NAME_MAX_BYTES})"
        if len(name.encode()) > NAME_MAX_BYTES
        else "contains a path separator ('/' or '\\')" if "/" in name or "\\" in name
        else f"is {name!r}, a relative directory, not a name" if name in (".", "..")
        else "contains control characters"
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name)
        else None
    )  # fmt: skip
    if bad:
        c.add(
            key,
            name if len(name.encode()) <= NAME_MAX_BYTES else name[:40] + "...",
            f"{bad}: the name must be a single directory name (it is the last part of "
            "checkpoint.save_dir)",
            f"--override {key}=my_run (letters, digits, '-', '_', '.'; keep it short: a sweep "
            "appends its job's suffix); set checkpoint.save_dir to choose where runs are saved",
        )


def seeds(c: Checker) -> None:
    """Seeds go to torch, numpy and Python's random: 0 .. 2**32-1."""
    for key in ("runtime.seed", "data_sampling.seed"):
        value = c.get(key)
        c.range(
            key,
            value is None or (isinstance(value, int) and 0 <= value <= SEED_MAX),
            f"0 <= seed <= 2**32-1 ({SEED_MAX})",
            "42",
        )


def max_length_cap(c: Checker) -> None:
    value = c.get("dataset.max_length")
    if isinstance(value, int) and value > MAX_LENGTH_CAP:
        c.add(
            "dataset.max_length",
            value,
            f"must be <= {MAX_LENGTH_CAP} tokens (the model's context is far smaller)",
            "--override dataset.max_length=2048 (at most the policy's context)",
        )


def paths(c: Checker) -> None:
    """Checks that read the file system (``check_paths``): the checkpoint directory can be
    written, validation is not the training file, ``max_length`` fits the policy's context."""
    save_dir(c)
    distinct_splits(c)
    model_context(c)


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path(path.anchor or ".")


def save_dir(c: Checker) -> None:
    """Fail now, not at the first save after training: nothing is created here (the
    nearest existing ancestor must be a writable directory)."""
    key = "checkpoint.save_dir"
    value = c.get(key)
    if not value:
        return
    target = Path(os.path.abspath(os.path.expanduser(str(value))))
    existing = _nearest_existing(target)
    fix = f"--override {key}=<a directory you can write>"
    if not existing.is_dir():
        what = "is not a directory" if existing == target else "is a file, not a directory"
        c.add(key, value, f"{existing} {what}, so checkpoints cannot be saved there", fix)
    elif not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == target else f" (its nearest existing parent {existing})"
        c.add(
            key,
            value,
            f"is not writable{where}: checkpoints could not be saved",
            f"{fix}, or make {existing} writable",
        )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def distinct_splits(c: Checker) -> None:
    train, valid = c.get("dataset.train"), c.get("dataset.validation")
    if train and valid and _same_file(str(train), str(valid)):
        c.add(
            "dataset.validation",
            valid,
            f"is the training file ({train}): validation loss would measure memorisation, "
            "and the best checkpoint would be chosen on training data",
            "--override dataset.validation=<a held-out split, e.g. .../processed/valid.jsonl>",
        )


def model_context(c: Checker) -> None:
    """``dataset.max_length`` within the policy's ``max_seq_len`` (params.json), when the
    policy says it; a model without it is not checked here."""
    import json

    policy, length = c.get("models.policy.path"), c.get("dataset.max_length")
    if not policy or not isinstance(length, int):
        return
    params = Path(str(policy)) / "params.json"
    try:
        context = json.loads(params.read_text()).get("max_seq_len")
    except (OSError, ValueError, AttributeError):
        return  # missing or unreadable: the model loader reports it with its file
    if isinstance(context, int) and not isinstance(context, bool) and 0 < context < length:
        c.add(
            "dataset.max_length",
            length,
            f"is longer than the policy's context (max_seq_len {context} in {params})",
            f"--override dataset.max_length={context}",
        )
