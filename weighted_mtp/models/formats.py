"""Checkpoint formats of the MTP policy: Meta directories and safetensors (and, read
only, torch.distributed.checkpoint directories: :mod:`weighted_mtp.models.dcp`).

Meta directory: ``params.json`` + ``consolidated.pth`` or model-parallel shards
``consolidated.00.pth``, ``consolidated.01.pth``, ... Shards are concatenated the way Meta's
llama repo splits them (fairscale): column-parallel weights (wq, wk, wv, w1, w3, output)
along dim 0, row-parallel weights (wo, w2) and the parallel embedding (tok_embeddings)
along dim 1; norms are replicated (shard 0 is used).

Safetensors directory: ``params.json`` + ``model.safetensors`` with the same keys (the
params are also stored in the file's metadata, so the file alone suffices).

Loading never copies a large checkpoint twice: ``torch.load(mmap=True, weights_only=True)``
then ``load_state_dict(assign=True)`` on a model built on the meta device; a copy happens
only when the checkpoint's dtype or device differs from the requested one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from weighted_mtp.errors import UserError
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.models.params import PARAMS_FILE, read_params_json

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}  # fmt: skip
DTYPE_NAMES = ("float32", "float16", "bfloat16")  # what a config names (DTYPES: + aliases)
SAFETENSORS_FILE = "model.safetensors"
_SHARD_DIM = {
    "tok_embeddings.weight": 1, "output.weight": 0,
    "wq.weight": 0, "wk.weight": 0, "wv.weight": 0, "wo.weight": 1,
    "w1.weight": 0, "w3.weight": 0, "w2.weight": 1,
}  # fmt: skip


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch.dtype) -> torch.dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPE_NAMES)}")
    return DTYPES[dtype]


def shard_dim(key: str) -> int | None:
    """Dimension a Meta model-parallel shard splits ``key`` along (None: replicated)."""
    for suffix, d in _SHARD_DIM.items():
        if key.endswith(suffix):
            return d
    return None


def meta_checkpoint_files(path: Path) -> list[Path]:
    """``consolidated.pth`` or the sorted ``consolidated.NN.pth`` shards of a Meta dir."""
    single = path / "consolidated.pth"
    shards = sorted(
        p
        for p in path.glob("consolidated.*.pth")
        if re.fullmatch(r"consolidated\.\d+\.pth", p.name)
    )
    if single.exists() and shards:
        raise UserError(f"{path} holds both consolidated.pth and {shards[0].name}: keep one set")
    if single.exists():
        return [single]
    if not shards:
        raise UserError(
            f"{path} has no consolidated.pth (nor consolidated.NN.pth shards): "
            "point models.policy.path at a Meta checkpoint directory"
        )
    return shards


_read_params = read_params_json  # (models.reader's name for it)


def read_meta_dir(path: str | Path) -> tuple[ModelArgs, dict[str, Tensor]]:
    """params + state dict (memory-mapped; shards concatenated) of a Meta directory."""
    path = Path(path)
    args = read_params_json(path)
    files = meta_checkpoint_files(path)
    parts = [_load_pth(f) for f in files]
    if len(parts) == 1:
        return args, parts[0]
    sd: dict[str, Tensor] = {}
    for key in parts[0]:
        d = shard_dim(key)
        if d is None:
            sd[key] = parts[0][key]
        else:
            sd[key] = torch.cat([p[key] for p in parts], dim=d)
    return args, sd


def _load_pth(f: Path) -> dict[str, Tensor]:
    """A Meta ``.pth`` through torch's weights-only unpickler: tensors and plain containers,
    never code; anything else is a clear error."""
    try:
        sd = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # UnpicklingError (a forbidden global), truncated, not torch
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{f}: not a readable weights-only torch checkpoint ({first})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise UserError(f"{f}: not a state dict of tensors")
    return sd


def read_safetensors(path: str | Path) -> tuple[ModelArgs, dict[str, Tensor]]:
    """params + state dict of a safetensors dir (params.json + model.safetensors) or file."""
    path = Path(path)
    file = path / SAFETENSORS_FILE if path.is_dir() else path
    if not file.exists():
        raise UserError(f"{file} does not exist: expected a safetensors MTP checkpoint")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{file}: not a readable safetensors file ({exc})") from None
    if (file.parent / PARAMS_FILE).exists():
        args = read_params_json(file.parent)
    elif "params" in meta:
        args = ModelArgs.from_dict(json.loads(meta["params"]))
    else:
        raise UserError(f"{file}: no params.json beside it and no 'params' in its metadata")
    return args, sd


def _fix_vocab(args: ModelArgs, sd: Mapping[str, Tensor]) -> None:
    """Llama's params.json may say vocab_size -1: take it from the embedding."""
    if args.vocab_size <= 0 and "tok_embeddings.weight" in sd:
        args.vocab_size = int(sd["tok_embeddings.weight"].shape[0])


def check_state_dict(
    sd: Mapping[str, Tensor], args: ModelArgs, source: str, vocab_size: int | None = None
) -> None:
    """Raise UserError naming every missing/unexpected/mis-shaped key of ``sd``."""
    _fix_vocab(args, sd)
    if vocab_size is not None and args.vocab_size != vocab_size:
        raise UserError(
            f"{source}: the checkpoint has vocab_size {args.vocab_size} but the "
            f"tokenizer has {vocab_size} ids: use the tokenizer the model was "
            "trained with (models.policy.tokenizer_path)"
        )
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in MTPTransformer(args).state_dict().items()}
    except ValueError as e:
        raise UserError(f"{source}: params are inconsistent: {e}") from e
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs params {expected[k]}"
        for k in set(sd) & set(expected)
        if tuple(sd[k].shape) != expected[k]
    )
    if not (missing or unexpected or shapes):
        return
    n_extra = len({k.split(".")[1] for k in sd if k.startswith("extra_heads.")})
    n_layers = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    lines = [
        f"{source} does not match its params (n_layers {args.n_layers}, n_future_tokens "
        f"{args.n_future_tokens}, dim {args.dim}, vocab_size {args.vocab_size}):"
    ]
    if n_extra != args.n_future_tokens - 1 or n_layers != args.n_layers - args.n_future_tokens + 1:
        lines.append(
            f"  the checkpoint has {n_layers} layers + {n_extra} extra_heads, i.e. "
            f"n_future_tokens {n_extra + 1}, n_layers {n_layers + n_extra}"
        )
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            lines.append(
                f"  {title} keys ({len(keys)}): "
                + ", ".join(keys[:20])
                + (" ..." if len(keys) > 20 else "")
            )
    lines.append("  fix params.json or point the path at the matching checkpoint")
    raise UserError("\n".join(lines))


def model_from_state_dict(
    sd: Mapping[str, Tensor],
    args: ModelArgs,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    source: str = "state dict",
    vocab_size: int | None = None,
) -> MTPTransformer:
    """Check ``sd`` against ``args`` and adopt its tensors (no copy if dtype/device match)."""
    dt = resolve_dtype(dtype)
    check_state_dict(sd, args, source, vocab_size)
    with torch.device("meta"):
        model = MTPTransformer(args, dtype=dt)
    tensors = {k: v.to(device=device, dtype=dt) for k, v in sd.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model


def read_checkpoint(path: str | Path) -> tuple[ModelArgs, dict[str, Tensor]]:
    """params + state dict of a Meta dir, a safetensors dir or a .safetensors file, or a
    torch.distributed.checkpoint dir (:mod:`weighted_mtp.models.dcp`)."""
    from weighted_mtp.models.dcp import is_dcp, read_dcp  # (torch.distributed.checkpoint: on use)

    p = Path(path)
    if is_dcp(p):
        return read_dcp(p)
    if (p.is_file() and p.suffix == ".safetensors") or (p / SAFETENSORS_FILE).exists():
        return read_safetensors(p)
    if p.is_dir():
        return read_meta_dir(p)
    raise UserError(f"{p} is neither a Meta model directory nor a safetensors checkpoint")


def load_model(
    path: str | Path,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    vocab_size: int | None = None,
) -> MTPTransformer:
    """Load either format, chosen by what ``path`` holds."""
    args, sd = read_checkpoint(path)
    return model_from_state_dict(sd, args, dtype, device, str(path), vocab_size)


def write_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file``, readable by others (it creates files 0600)."""
    save_file(tensors, str(path), metadata=metadata)
    path.chmod(0o644)


def _write_params(model: MTPTransformer, path: Path) -> None:
    (path / PARAMS_FILE).write_text(json.dumps(model.args.to_dict(), indent=2) + "\n")


def save_meta_dir(model: MTPTransformer, path: str | Path) -> None:
    """Write ``params.json`` + ``consolidated.pth`` (Meta's keys and layout)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_params(model, path)
    torch.save(model.state_dict(), path / "consolidated.pth")


def save_safetensors(model: MTPTransformer, path: str | Path) -> None:
    """Write ``params.json`` + ``model.safetensors`` (same keys; params also in metadata)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_params(model, path)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "params": json.dumps(model.args.to_dict())}
    write_safetensors(sd, path / SAFETENSORS_FILE, meta)
