"""torch.distributed.checkpoint (DCP) policy directories, read without running code.

A DCP directory holds ``.metadata`` (the tensors' shapes, dtypes and where their chunks
lie) and ``__<rank>_<n>.distcp`` data files; ``params.json`` beside them gives the MTP
shape. torch's :class:`~torch.distributed.checkpoint.FileSystemReader` reads
``.metadata`` with plain ``pickle.load``, which would run whatever code the file names;
:class:`SafeReader` unpickles it with an allow-list of DCP's own metadata classes, torch
sizes, dtypes and layouts and paths, and refuses anything else. (The data files are
read by torch with ``torch.load(weights_only=True)``.)

:func:`read_dcp` gives the whole state dict in one process, without a process group
(evaluation, export); training loads the same directory sharded
(:mod:`weighted_mtp.models.reader`).
"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

from weighted_mtp.errors import UserError
from weighted_mtp.models.mtp import ModelArgs
from weighted_mtp.models.params import PARAMS_FILE, read_params_json

METADATA_FILE = ".metadata"  # marks a DCP directory
_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "StorageMeta", "MetadataIndex", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip


def is_dcp(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / METADATA_FILE).is_file()


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedReader, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UserError(
            f"{self.source}: refusing to load {module}.{name} (not DCP checkpoint metadata; "
            "a .metadata file could run code): write the checkpoint with "
            "torch.distributed.checkpoint.save"
        )


class SafeReader(dcp.FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` is unpickled through an allow-list."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        path = Path(self.path) / (METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}")
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f, path).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: not a readable DCP metadata file ({exc})") from None
        if not isinstance(metadata, Metadata):
            raise UserError(f"{path}: holds {type(metadata).__name__}, not DCP Metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def tensor_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor of the checkpoint: key -> (shape, dtype) (non-tensor entries left out)."""
    metadata = SafeReader(str(path)).read_metadata().state_dict_metadata
    return {
        k: (tuple(m.size), m.properties.dtype)
        for k, m in metadata.items()
        if isinstance(m, TensorStorageMetadata)
    }


def read_params(path: Path) -> ModelArgs:
    """The MTP shape: ``params.json`` beside ``.metadata``."""
    if not (path / PARAMS_FILE).is_file():
        raise UserError(f"{path}: a DCP checkpoint needs {PARAMS_FILE} beside {METADATA_FILE}")
    return read_params_json(path)


def read_dcp(path: str | Path) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """params + the whole state dict (in the stored dtype) of a DCP directory, in this
    process alone: however many ranks wrote it, ``dcp.load`` fills full-size tensors from
    every stored chunk."""
    p = Path(path)
    args = read_params(p)
    sd = {k: torch.empty(s, dtype=dt) for k, (s, dt) in tensor_shapes(p).items()}
    with warnings.catch_warnings():  # one process on purpose: not a missing process group
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp.load(sd, storage_reader=SafeReader(str(p)), no_dist=True)
    return args, sd
