"""Lazy checkpoint reading: the model's shape without its weights, then only the rows a
rank owns.

FSDP2 shards every parameter along dim 0 (``torch.chunk`` order: rank r owns rows
``[r*c, (r+1)*c)`` of ``c = ceil(rows / world_size)``). :func:`load_weights` fills a model
built on the meta device - plain parameters in full, sharded (DTensor) ones with just
this rank's rows - from a :class:`CheckpointReader`, which reads rows of one tensor at a
time from the memory-mapped file: ``torch.load(mmap=True, weights_only=True)`` for Meta's
``consolidated*.pth`` (model-parallel shards re-joined per row range) and
``safe_open(...).get_slice`` for safetensors, and torch.distributed.checkpoint (DCP: a
directory with ``.metadata``, plus ``params.json``) whose sharded parameters ``dcp.load``
fills in place, reading only the stored chunks that overlap this rank's shard. No rank
ever holds a full copy of the model; the largest transient is one parameter's local rows
(DCP: one stored chunk) in the checkpoint's dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from weighted_mtp.errors import UserError
from weighted_mtp.models.dcp import SafeReader, is_dcp, read_params, tensor_shapes
from weighted_mtp.models.formats import (
    PARAMS_FILE,
    SAFETENSORS_FILE,
    _read_params,
    check_state_dict,
    meta_checkpoint_files,
    shard_dim,
)
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer

_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class CheckpointReader:
    """``args``, ``shapes`` (key -> (shape, dtype)) and ``rows(key, start, stop)`` of a Meta
    directory, a safetensors directory or file, or a DCP directory (``dcp`` is True)."""

    def __init__(self, path: str | Path) -> None:
        p = self.path = Path(path)
        self._parts: list[dict[str, Tensor]] = []
        self._st = None
        self.dcp = is_dcp(p)
        if self.dcp:
            self.args, self.shapes = read_params(p), tensor_shapes(p)
        elif (p.is_file() and p.suffix == ".safetensors") or (p / SAFETENSORS_FILE).exists():
            file = p / SAFETENSORS_FILE if p.is_dir() else p
            self._st = safe_open(str(file), framework="pt")
            meta = self._st.metadata() or {}
            if (file.parent / PARAMS_FILE).exists():
                self.args = _read_params(file.parent)
            elif "params" in meta:
                self.args = ModelArgs.from_dict(json.loads(meta["params"]))
            else:
                raise UserError(f"{file}: no params.json beside it and no 'params' in its metadata")
            self.shapes = {
                k: (tuple(self._st.get_slice(k).get_shape()), _dtype(self._st.get_slice(k)))
                for k in self._st.keys()  # noqa: SIM118 (safe_open has no iter)
            }
        elif p.is_dir():
            self.args = _read_params(p)
            self._parts = [
                torch.load(f, map_location="cpu", mmap=True, weights_only=True)
                for f in meta_checkpoint_files(p)
            ]
            self.shapes = {k: (self._joined_shape(k), v.dtype) for k, v in self._parts[0].items()}
        else:
            raise UserError(f"{p} is neither a Meta model directory nor a safetensors checkpoint")

    def _joined_shape(self, key: str) -> tuple[int, ...]:
        shape = list(self._parts[0][key].shape)
        d = shard_dim(key) if len(self._parts) > 1 else None
        if d is not None:
            shape[d] = sum(part[key].shape[d] for part in self._parts)
        return tuple(shape)

    def check(self, vocab_size: int | None = None) -> ModelArgs:
        """The params, checked against the tensors' shapes (a UserError names mismatches)."""
        meta = {k: torch.empty(s, dtype=dt, device="meta") for k, (s, dt) in self.shapes.items()}
        check_state_dict(meta, self.args, str(self.path), vocab_size)
        return self.args

    def rows(self, key: str, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` (dim 0) of the full tensor ``key``; reads only those
        (DCP: the whole tensor, then the rows)."""
        if self.dcp:
            shape, dtype = self.shapes[key]
            full = {key: torch.empty(shape, dtype=dtype)}
            dcp.load(full, storage_reader=SafeReader(str(self.path)), no_dist=True)
            return full[key][start:stop]
        if self._st is not None:
            return self._st.get_slice(key)[start:stop]
        d = shard_dim(key) if len(self._parts) > 1 else None
        if d is None:
            return self._parts[0][key][start:stop]
        if d == 1:  # row-parallel: every shard holds all rows, a slice of the columns
            return torch.cat([part[key][start:stop] for part in self._parts], dim=1)
        pieces, offset = [], 0  # column-parallel: shards are consecutive row ranges
        for part in self._parts:
            t = part[key]
            lo, hi = max(start - offset, 0), min(stop - offset, t.shape[0])
            if lo < hi:
                pieces.append(t[lo:hi])
            offset += t.shape[0]
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def _dtype(st_slice) -> torch.dtype:
    name = st_slice.get_dtype()
    if name not in _ST_DTYPES:
        raise UserError(f"unsupported safetensors dtype {name}: use F32, BF16 or F16")
    return _ST_DTYPES[name]


def local_rows(param: Tensor) -> tuple[int, int]:
    """The rows ``[start, stop)`` of the full parameter that this rank holds: any mesh
    whose placements are ``Shard(0)`` or ``Replicate`` (FSDP's 1-D mesh, HSDP's
    ``(replicate, shard)``), read from the DTensor's own chunk offsets."""
    rows = param.shape[0]
    if not isinstance(param, DTensor):
        return 0, rows
    if any(p != Shard(0) and not isinstance(p, Replicate) for p in param.placements):
        raise NotImplementedError(
            f"sharded loading supports Shard(0) / Replicate only, not {param.placements}"
        )
    start = min(int(param.__create_chunk_list__()[0].offsets[0]), rows)
    return start, start + param.to_local().shape[0]


@torch.no_grad()
def load_weights(model: nn.Module, reader: CheckpointReader) -> None:
    """Fill ``model``'s parameters (already materialised, e.g. by ``to_empty``; plain or
    FSDP-sharded) from ``reader``: each rank reads only the rows it holds. A DCP
    checkpoint is loaded by ``dcp.load`` into the parameters themselves (every rank calls
    this together when a process group is running), cast to their dtype."""
    if reader.dcp:
        params = dict(model.named_parameters())
        missing = sorted(set(params) - set(reader.shapes))
        if missing:
            raise UserError(f"{reader.path}: DCP checkpoint lacks {missing[:5]}")
        storage = SafeReader(str(reader.path))
        dcp.load(params, storage_reader=storage, no_dist=not tdist.is_initialized())
        return
    for name, p in model.named_parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        local.copy_(reader.rows(name, *local_rows(p)))


def assign_weights(model: nn.Module, reader: CheckpointReader, device: torch.device) -> None:
    """Give a meta-device ``model`` the checkpoint's full tensors on ``device`` (in the
    model's dtype; no copy when the memory-mapped tensor already is that)."""
    dtype = next(model.parameters()).dtype
    sd = {k: reader.rows(k, 0, s[0]).to(device, dtype) for k, (s, _) in reader.shapes.items()}
    model.load_state_dict(sd, strict=True, assign=True)


def meta_model(reader: CheckpointReader, dtype: torch.dtype) -> MTPTransformer:
    """The checkpoint's model on the meta device (no memory), in ``dtype``."""
    with torch.device("meta"):
        return MTPTransformer(reader.args, dtype=dtype)
