"""The ``checkpoint`` command: ``verify`` a checkpoint, ``migrate`` an old pickle ``.pt``.

``migrate`` reads an old single-file checkpoint (``format: 1``, a ``torch.save`` pickle)
with ``torch.load(weights_only=True)``: torch's restricted unpickler, which builds tensors
and plain containers only, plus numpy arrays (the old numpy RNG state) allow-listed; any
other global in the file is refused, so nothing in it runs. It writes the current format
beside it (``checkpoint_final.pt`` -> ``checkpoint_final/``). Run it from the directory
the training ran in: relative paths in the old config are resolved from there.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weighted_mtp.training.checkpoint.compat import plan_of
from weighted_mtp.training.checkpoint.files import CheckpointError, finish, temp_dir
from weighted_mtp.training.checkpoint.reader import Checkpoint, absolute_paths, relative_paths
from weighted_mtp.training.checkpoint.tensors import encode, write_part

HELP = "verify a checkpoint against its manifest, or migrate an old pickle .pt checkpoint"


def _numpy_globals() -> list[Any]:
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_legacy(path: Path) -> dict[str, Any]:
    """An old ``format: 1`` checkpoint, through the weights-only unpickler."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a forbidden global (code), truncated, not a torch file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused by the weights-only unpickler, so not migrated ({first})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise CheckpointError(f"{path}: not an old weighted_mtp checkpoint (format 1)")
    return state


def _optimizer_by_name(state: dict[str, Any]) -> dict[str, Any]:
    """Old optimizer state (params by id) -> keyed by parameter name, as now.

    Ids follow ``build_optimizer``: matrices (ndim >= 2) first, then the rest, each in the
    modules' parameter order."""
    names = [(f"{m}.{k}", t) for m, sd in state["modules"].items() for k, t in sd.items()]
    order = [n for n, t in names if t.ndim >= 2] + [n for n, t in names if t.ndim < 2]
    shapes = dict(names)
    osd = state["optimizer"]
    ids = [i for g in osd["param_groups"] for i in g["params"]]
    if sorted(ids) != list(range(len(order))):
        raise CheckpointError("the optimizer's parameters do not match the saved modules")
    out_state = {}
    for i, s in osd["state"].items():
        name = order[int(i)]
        if "exp_avg" in s and tuple(s["exp_avg"].shape) != tuple(shapes[name].shape):
            raise CheckpointError(f"optimizer state {i} does not fit parameter {name}")
        out_state[name] = s
    groups = [g | {"params": [order[i] for i in g["params"]]} for g in osd["param_groups"]]
    return {"state": out_state, "param_groups": groups}


def migrate(src: Path, out: Path | None = None) -> Path:
    """Convert an old ``.pt`` checkpoint to a checkpoint directory; returns its path."""
    from weighted_mtp.data.index import content_sha256

    state = read_legacy(src)
    dst = out or src.with_suffix("")
    cfg = absolute_paths(state["config"])
    train = cfg["dataset"]["train"]
    sha = content_sha256(train) if Path(train).is_file() else None
    world = int(state["sampler"].get("world_size", 1))
    name, key, pos, has_gauss, cached = state["rng"]["numpy"]
    version, mt, gauss = state["rng"]["python"]
    rng = {
        "python": [version, list(mt), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(key).astype(np.int64)), pos, has_gauss, cached],
        "torch": state["rng"]["torch"],
    }
    opt_tensors: dict[str, torch.Tensor] = {}
    optim_skel = encode(_optimizer_by_name(state), opt_tensors)
    rng_tensors: dict[str, torch.Tensor] = {}
    rng_skel = encode(rng, rng_tensors)
    weights = {f"{m}.{k}": t for m, sd in state["modules"].items() for k, t in sd.items()}
    best = state["best_val_loss"]
    meta = {
        "stage": state["stage"],
        "step": state["step"],
        "epoch": state["epoch"],
        "world_size": world,
        "sharded": False,
        "value_head_config": state["value_head_config"],
        "scheduler": state["scheduler"],
        "scaler": state["scaler"],
        "sampler": state["sampler"],
        "best_val_loss": None if best == float("inf") else best,
        "best_step": -1,  # not recorded by the old format
        "val": state["val"],
        "provenance": state["provenance"],
        "plan": plan_of(cfg, world, sha),
        "relative_paths": relative_paths(cfg, dst),
        "optimizer": optim_skel,
        "rng": rng_skel,
    }
    tmp = temp_dir(dst)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_part(tmp, "weights", weights, 0, 1, False)
    write_part(tmp, "optimizer", opt_tensors, 0, 1, False)
    write_part(tmp, "rng", rng_tensors, 0, 1, False)
    finish(tmp, dst, meta, cfg)
    return dst


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    v = sub.add_parser("verify", help="check every file of a checkpoint against its manifest")
    v.add_argument("path", metavar="PATH", help="a checkpoint directory")
    m = sub.add_parser("migrate", help="convert an old pickle checkpoint_*.pt (read safely)")
    m.add_argument("path", metavar="OLD.pt", help="an old single-file checkpoint")
    m.add_argument("--out", default=None, help="output directory (default: OLD without .pt)")


def _checkpoints_inside(path: Path) -> list[Path]:
    """The checkpoints directly inside ``path`` when it is a save dir (not a checkpoint)."""
    from weighted_mtp.training.checkpoint.reader import is_checkpoint

    if not path.is_dir() or is_checkpoint(path):
        return []
    return sorted(p for p in path.iterdir() if not p.name.startswith(".") and is_checkpoint(p))


def _verify_save_dir(path: Path, inside: list[Path]) -> int:
    """Verify every checkpoint of a save dir, one line each; a bad one fails the command."""
    bad = []
    print(f"{path}: a save dir with {len(inside)} checkpoint(s)")
    for p in inside:
        try:
            ck = Checkpoint(p)
            ck.manifest.verify_all()
            print(f"  ok: {p.name} ({ck.stage}, step {ck.step}, {len(ck.manifest.files)} files)")
        except CheckpointError as exc:
            bad.append(p.name)
            print(f"  FAILED: {p.name}: {exc}")
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} of {len(inside)} checkpoint(s) failed verification "
            f"({', '.join(bad)}; see above). Fix: resume from a verified one "
            "(checkpoint.resume=auto skips the bad ones) or delete them"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if args.action == "verify":
        inside = _checkpoints_inside(path)
        if inside:
            return _verify_save_dir(path, inside)
        ck = Checkpoint(path)
        ck.manifest.verify_all()
        print(f"ok: {path} ({ck.stage}, step {ck.step}, {len(ck.manifest.files)} files verified)")
        return 0
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (migrate takes an old checkpoint_*.pt)")
    dst = migrate(path, Path(args.out) if args.out else None)
    print(f"migrated {path} -> {dst} (verify: python -m weighted_mtp checkpoint verify {dst})")
    return 0
