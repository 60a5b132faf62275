"""The simulated machine: fake tensors, a fake process group, worst-case data answers.

Nothing here allocates real memory for the model: every tensor created under
:func:`fake_world` is a ``FakeTensor`` (shape, dtype, device; no storage), and every
collective goes to torch's ``fake`` backend (a no-op process group of any world size).

Data-dependent operations have no answer on fake tensors (how many targets are valid?).
:class:`WorstCaseData` answers them as if every position were a valid target: a boolean
selection keeps every element, ``nonzero`` returns every index, a tensor read as a Python
number is 1 (True for a boolean). That is the memory upper bound of a batch whose every
sequence fills ``dataset.max_length``, which is what the plan reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    unset_fake_temporarily,
)
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


class WorstCaseData(TorchDispatchMode):
    """Answers data-dependent ops on fake tensors as if every element were selected."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        try:
            return func(*args, **kwargs)
        except (DynamicOutputShapeException, DataDependentOutputException):
            pass
        if func is aten._local_scalar_dense.default:
            t = args[0]
            return True if t.dtype == torch.bool else (1.0 if t.is_floating_point() else 1)
        if func is aten.nonzero.default:
            t = args[0]
            return torch.empty((t.numel(), t.dim()), dtype=torch.long, device=t.device)
        if func is aten.masked_select.default:
            t, mask = args
            return t.new_empty(torch.broadcast_shapes(t.shape, mask.shape).numel())
        if func is aten.index.Tensor:
            return _index_all(*args)
        raise NotImplementedError(f"the plan cannot simulate the data-dependent op {func}")


def _index_all(t: torch.Tensor, indices: list[torch.Tensor | None]) -> torch.Tensor:
    """``t[bool_mask, ...]`` with every element of the mask True."""
    shape: list[int] = []
    dim = 0
    for idx in indices:
        if idx is None:
            shape.append(t.shape[dim])
            dim += 1
        elif idx.dtype == torch.bool:
            shape.append(idx.numel())
            dim += idx.dim()
        else:
            shape.extend(idx.shape)
            dim += 1
    shape.extend(t.shape[dim:])
    return t.new_empty(shape)


@contextlib.contextmanager
def fake_process_group(rank: int, world_size: int) -> Iterator[None]:
    """torch.distributed initialised on the ``fake`` backend (collectives do nothing)."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("the plan needs its own process group; one is already running")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


class _ConversionMemo(dict):
    """FakeTensorMode's memo of converted tensors, holding entries for one conversion only.

    The converter memoises every fake tensor it makes, the output of every simulated op
    included. Its own memo holds them by *weak* reference, which ``Module.to()`` /
    ``.float()`` cannot live with (``torch.utils.swap_tensors`` refuses to swap a fake
    parameter that has a weak reference); holding them strongly would keep freed tensors
    alive (a real run frees a no-grad temporary as soon as its last use is done). The memo
    is only read within one conversion (a view's base, a tensor met twice in the same
    input), so the converter's entry points below empty it when the outermost conversion
    returns.
    """

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0

    def around(self, convert: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            try:
                return convert(*args, **kwargs)
            finally:
                self.depth -= 1
                if not self.depth:
                    self.clear()

        return run


def real_mesh(init_mesh: Callable[..., Any]) -> Callable[..., Any]:
    """``init_device_mesh`` computed on real tensors (its rank coordinates are data)."""

    def init(*args: Any, **kwargs: Any) -> Any:
        with unset_fake_temporarily():
            return init_mesh(*args, **kwargs)

    return init


def same_rows_everywhere(t: torch.Tensor, info: Any) -> list[torch.Tensor]:
    """``distributed.all_gather_rows`` on the fake process group: every rank holds as many
    rows as this one (the worst case), so the gathered list is ``world_size`` buffers of
    ``t``'s shape, allocated as the real gather allocates them."""
    return [torch.empty_like(t) for _ in range(info.world_size)]


@contextlib.contextmanager
def fake_world(rank: int, world_size: int) -> Iterator[FakeTensorMode]:
    """Fake tensors + worst-case data answers + (world_size > 1) a fake process group."""
    group = fake_process_group(rank, world_size) if world_size > 1 else contextlib.nullcontext()
    # FakeTensorMode's dispatch cache (process-wide) changes which copies autograd makes
    # for the cached ops' outputs: every simulation starts from an empty one, so a plan
    # (and each candidate of find_fix after it) is the same whatever ran before it
    FakeTensorMode.cache_clear()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    converter = mode.fake_tensor_converter
    memo = converter.meta_converter.tensor_memo = _ConversionMemo()
    converter.from_real_tensor = memo.around(converter.from_real_tensor)
    converter.from_meta_and_device = memo.around(converter.from_meta_and_device)
    with group, mode, WorstCaseData():
        yield mode


def local_bytes(tensors: Any) -> int:
    """Bytes this rank holds for ``tensors`` (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total
