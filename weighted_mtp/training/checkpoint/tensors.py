"""State trees <-> safetensors files + a JSON skeleton (no pickle anywhere).

:func:`encode` turns a nested state (dicts, lists, numbers, strings, tensors) into a JSON
skeleton in which every tensor is replaced by ``{"__tensor__": key}``; the tensors go to
safetensors files of one *part* (``model``, ``optimizer``, ``rng``):

- replicated: ``{part}.safetensors`` written by rank 0, full tensors;
- sharded (FSDP2, DTensor leaves): ``{part}-{rank:05d}-of-{world:05d}.safetensors`` written
  by every rank in parallel: its local chunk of each DTensor (the file's metadata
  ``chunks`` gives each chunk's global shape and offsets) and, on rank 0, the plain
  tensors. Nothing is gathered. Under hsdp only the first node's ranks write chunks (the
  other nodes hold copies of them; their files are empty).

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
from torch.distributed.tensor import DTensor, Replicate

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
            if _replica(t):
                continue  # hsdp: another node's copy of a chunk the first node writes
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


def _replica(t: DTensor) -> bool:
    """``t``'s chunk is a copy held along a replicated mesh dimension (HSDP's mesh
    ``(replicate, shard)``: a node other than the first)."""
    coord = t.device_mesh.get_coordinate()
    if coord is None:  # not on this rank's mesh
        return False
    return any(isinstance(p, Replicate) and c for p, c in zip(t.placements, coord, strict=True))


class PartReader:
    """The tensors of one part of a verified checkpoint (see the module docstring)."""

    def __init__(self, manifest: Manifest, part: str) -> None:
        self.part = part
        names = [n for n in manifest.names(prefix=part) if _is_part_file(n, part)]
        if not names:
            raise CheckpointError(f"{manifest.dir}: no {part} tensors ({part}*.safetensors)")
        # key -> [(file, global shape, offsets, local shape)]
        self.where: dict[str, list[tuple[Path, list[int], list[int], list[int]]]] = {}
        self.dtypes: dict[str, str] = {}  # key -> safetensors dtype (F32, I64, ...)
        for name in names:
            path = manifest.path(name)
            try:
                with safe_open(str(path), framework="pt") as f:
                    chunks = json.loads((f.metadata() or {}).get("chunks", "{}"))
                    if not isinstance(chunks, dict):
                        raise CheckpointError(f"{path}: metadata 'chunks' must be an object")
                    for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        sl = f.get_slice(key)
                        shape = list(sl.get_shape())
                        self.dtypes[key] = sl.get_dtype()
                        c = chunks.get(key, {"shape": shape, "offsets": [0] * len(shape)})
                        glob, off = _checked_chunk(path, key, c, shape)
                        self.where.setdefault(key, []).append((path, glob, off, shape))
            except (SafetensorError, ValueError, OSError) as exc:
                raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
        for key, found in self.where.items():
            _check_cover(part, key, found)

    def __iter__(self) -> Iterator[str]:
        return iter(self.where)

    def full(self, key: str) -> Tensor:
        """The whole tensor ``key`` (assembled from its chunks)."""
        return self._region(key, None, None)

    def into(self, key: str, target: Tensor) -> Tensor:
        """Fill ``target`` (a tensor or a DTensor of this run) with the saved ``key``."""
        self._check_dtype(key, target.dtype)
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

    def _check_dtype(self, key: str, dtype: torch.dtype) -> None:
        """The saved tensor is of the target's kind (float, integer, bool): a float tensor
        relabelled as integers (same bytes) is refused, not cast into garbage."""
        saved = _DTYPES.get(self.dtypes.get(key, ""))
        if saved is None and key in self.dtypes:
            raise CheckpointError(f"{self.part} tensor {key}: unknown dtype {self.dtypes[key]}")
        if saved is not None and dtype_kind(saved) != dtype_kind(dtype):
            raise CheckpointError(
                f"{self.part} tensor {key}: checkpoint dtype {self.dtypes[key]}, this run "
                f"{dtype}; the file's metadata was changed: use another checkpoint"
            )

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


_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "U16": torch.uint16, "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64,
    "U64": torch.uint64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip
MAX_DIMS = 8


def dtype_kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "float"
    return "bool" if dtype == torch.bool else "complex" if dtype.is_complex else "integer"


def _checked_chunk(path: Path, key: str, c: Any, local: list[int]) -> tuple[list[int], list[int]]:
    """(global shape, offsets) of the chunk ``key`` of ``path`` after checking its
    ``chunks`` record: lists of integers >= 0 of the tensor's rank, the chunk inside."""
    shape = c.get("shape") if isinstance(c, dict) else None
    off = c.get("offsets") if isinstance(c, dict) else None
    ok = (
        isinstance(shape, list)
        and isinstance(off, list)
        and len(shape) == len(off) == len(local) <= MAX_DIMS
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape + off)
        and all(o + n <= s for o, n, s in zip(off, local, shape, strict=True))
    )
    if not ok:
        raise CheckpointError(
            f"{path}: metadata chunks[{key!r}] must be {{shape, offsets}} of {len(local)} "
            f"integers >= 0 holding its {local} chunk, got {json.dumps(c)[:120]}; use "
            "another checkpoint"
        )
    return shape, off


def _check_cover(part: str, key: str, found: list[tuple[Path, list[int], list[int], list[int]]]):
    """All chunks of ``key`` agree on its global shape and, together, hold exactly as many
    elements: a record claiming a larger tensor is refused before anything is allocated."""
    shape = found[0][1]
    held = sum(math.prod(local) for *_, local in found)
    if any(g != shape for _, g, _, _ in found) or held != math.prod(shape):
        raise CheckpointError(
            f"{part} tensor {key}: its chunks in {sorted({str(f[0].name) for f in found})} "
            f"claim a {shape} tensor but hold {held} elements (metadata 'chunks'); use "
            "another checkpoint"
        )


def _is_part_file(name: str, part: str) -> bool:
    return name == f"{part}.safetensors" or (
        name.startswith(f"{part}-") and name.endswith(".safetensors")
    )
