"""State trees <-> safetensors files + a JSON skeleton (no pickle anywhere).

:func:`encode` turns a nested state (dicts, lists, numbers, strings, tensors) into a JSON
skeleton in which every tensor is replaced by ``{"__tensor__": key}``; the tensors go to
safetensors files of one *part* (``model``, ``optimizer``, ``rng``):

- replicated: ``{part}.safetensors`` written by rank 0, full tensors;
- sharded (FSDP2, DTensor leaves): ``{part}-{rank:05d}-of-{world:05d}.safetensors`` written
  by every rank in parallel: its local chunk of each DTensor (the file's metadata
  ``chunks`` gives each chunk's global shape and offsets) and, on rank 0, the plain
  tensors. Nothing is gathered.

:class:`PartReader` reads a part back: a full tensor (chunks assembled), or the chunk a
DTensor of *this* run needs (any world size: overlapping regions are copied from the
saved chunks, read through safetensors slices).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.distributed.tensor import DTensor

from weighted_mtp.training.checkpoint.files import CheckpointError, Manifest

TENSOR = "__tensor__"
FLOAT = "__float__"


def encode(obj: Any, tensors: dict[str, Tensor], key: str = "") -> Any:
    """JSON-able skeleton of ``obj``; tensors are moved into ``tensors`` under their path.

    Raises TypeError for anything that is not data (no object is ever serialised)."""
    if isinstance(obj, Tensor):
        tensors[key] = obj
        return {TENSOR: key}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"{key or 'state'}: only string keys can be stored, got {list(obj)}")
        return {k: encode(v, tensors, f"{key}.{k}" if key else k) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {FLOAT: repr(obj)}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"{key}: a {type(obj).__name__} cannot be stored in a checkpoint")


def decode(skel: Any, tensor: Callable[[str], Tensor]) -> Any:
    """Inverse of :func:`encode`: ``tensor(key)`` supplies each tensor."""
    if isinstance(skel, dict):
        if TENSOR in skel:
            return tensor(skel[TENSOR])
        if FLOAT in skel:
            return float(skel[FLOAT])
        return {k: decode(v, tensor) for k, v in skel.items()}
    if isinstance(skel, list):
        return [decode(v, tensor) for v in skel]
    return skel


def part_files(part: str, rank: int, world: int, sharded: bool) -> str:
    return f"{part}-{rank:05d}-of-{world:05d}.safetensors" if sharded else f"{part}.safetensors"


def write_part(
    directory: Path, part: str, tensors: dict[str, Tensor], rank: int, world: int, sharded: bool
) -> str | None:
    """Write this rank's file of ``part`` (None: nothing to write on this rank)."""
    if not sharded and rank != 0:
        return None
    out: dict[str, Tensor] = {}
    chunks: dict[str, dict[str, list[int]]] = {}
    for key, t in tensors.items():
        if isinstance(t, DTensor):
            local = t.to_local()
            offsets = list(t.__create_chunk_list__()[0].offsets)
            full = tuple(local.shape) == tuple(t.shape)
            if (full and rank != 0) or local.numel() == 0:
                continue  # replicated (rank 0 writes it) or an empty shard
            if not full:
                chunks[key] = {"shape": list(t.shape), "offsets": offsets}
            t = local
        elif rank != 0:
            continue
        out[key] = t.detach().to("cpu").contiguous()
    name = part_files(part, rank, world, sharded)
    save_file(out, str(directory / name), metadata={"chunks": json.dumps(chunks)})
    return name


class PartReader:
    """The tensors of one part of a verified checkpoint (see the module docstring)."""

    def __init__(self, manifest: Manifest, part: str) -> None:
        self.part = part
        names = [n for n in manifest.names(prefix=part) if _is_part_file(n, part)]
        if not names:
            raise CheckpointError(f"{manifest.dir}: no {part} tensors ({part}*.safetensors)")
        # key -> [(file, global shape, offsets, local shape)]
        self.where: dict[str, list[tuple[Path, list[int], list[int], list[int]]]] = {}
        for name in names:
            path = manifest.path(name)
            try:
                with safe_open(str(path), framework="pt") as f:
                    chunks = json.loads((f.metadata() or {}).get("chunks", "{}"))
                    for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        shape = list(f.get_slice(key).get_shape())
                        c = chunks.get(key, {"shape": shape, "offsets": [0] * len(shape)})
                        self.where.setdefault(key, []).append(
                            (path, c["shape"], c["offsets"], shape)
                        )
            except (SafetensorError, ValueError, OSError) as exc:
                raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def full(self, key: str) -> Tensor:
        """The whole tensor ``key`` (assembled from its chunks)."""
        return self._region(key, None, None)

    def into(self, key: str, target: Tensor) -> Tensor:
        """Fill ``target`` (a tensor or a DTensor of this run) with the saved ``key``."""
        if isinstance(target, DTensor):
            chunk = target.__create_chunk_list__()[0]
            local = target.to_local()
            self._check_shape(key, list(target.shape))
            if local.numel():
                local.copy_(self._region(key, list(chunk.offsets), list(chunk.sizes)))
            return target
        src = self.full(key)
        if tuple(src.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{self.part} tensor {key}: checkpoint shape {tuple(src.shape)}, this run "
                f"{tuple(target.shape)} (another model shape)"
            )
        return src

    def _check_shape(self, key: str, shape: list[int]) -> None:
        if key not in self.where:
            raise CheckpointError(f"{self.part} tensor {key} is not in the checkpoint")
        saved = self.where[key][0][1]
        if saved != shape:
            raise CheckpointError(
                f"{self.part} tensor {key}: checkpoint shape {tuple(saved)}, this run "
                f"{tuple(shape)} (another model shape)"
            )

    def _region(self, key: str, offsets: list[int] | None, sizes: list[int] | None) -> Tensor:
        if key not in self.where:
            raise CheckpointError(f"{self.part} tensor {key} is not in the checkpoint")
        chunks = self.where[key]
        shape = chunks[0][1]
        if len(chunks) == 1 and chunks[0][3] == shape and (offsets is None or not shape):
            with safe_open(str(chunks[0][0]), framework="pt") as f:
                return f.get_tensor(key)
        offsets = offsets if offsets is not None else [0] * len(shape)
        sizes = sizes if sizes is not None else list(shape)
        out: Tensor | None = None
        filled = 0
        for path, _, c_off, c_shape in chunks:
            lo = [max(a, b) for a, b in zip(offsets, c_off, strict=True)]
            hi = [
                min(a + s, b + t) for a, s, b, t in zip(offsets, sizes, c_off, c_shape, strict=True)
            ]
            if any(h <= v for v, h in zip(lo, hi, strict=True)):
                continue
            with safe_open(str(path), framework="pt") as f:
                sl = f.get_slice(key)
                src = sl[tuple(slice(a - b, h - b) for a, h, b in zip(lo, hi, c_off, strict=True))]
            if out is None:
                out = torch.empty(sizes, dtype=src.dtype)
            out[tuple(slice(a - o, h - o) for a, h, o in zip(lo, hi, offsets, strict=True))] = src
            filled += src.numel()
        if out is None or filled != math.prod(sizes):
            raise CheckpointError(f"{self.part} tensor {key}: the saved chunks do not cover it")
        return out


def _is_part_file(name: str, part: str) -> bool:
    return name == f"{part}.safetensors" or (
        name.startswith(f"{part}-") and name.endswith(".safetensors")
    )
