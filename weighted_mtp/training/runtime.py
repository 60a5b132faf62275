"""Device, precision and seeding (the ``runtime`` section)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

DEVICES = ("auto", "cpu", "cuda", "mps")  # device kinds; cuda:N names one GPU
AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` = cuda > mps > cpu; anything else is taken as given (``cuda:1``)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def amp_dtype(mixed_precision: bool, name: str) -> torch.dtype | None:
    """The autocast dtype, or None when mixed precision is off."""
    if not mixed_precision:
        return None
    return AMP_DTYPES[name]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast for ``dtype`` on ``device`` (a no-op when dtype is None)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
