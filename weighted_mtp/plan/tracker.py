"""Per-category peak memory of a simulated rank: torch's MemTracker / FSDPMemTracker, plus
two categories they do not separate.

- ``Logits``: activations and temporaries whose last dimension is the vocabulary
  (the chunked logits of the MTP loss and of the reference, their softmax and gradients);
- ``Communication``: every tensor handed to a collective (c10d op), e.g. the flat
  gradient buckets of ``ddp``; FSDP's own all-gather / reduce-scatter buffers keep
  FSDPMemTracker's categories.

And one thing they count that no device holds: DTensor's sharding propagation (on a cache
miss, e.g. the ``_foreach_mul_`` of gradient clipping over every gradient shard) builds
*global-shape* tensors under its own ``FakeTensorMode`` to learn the output's metadata.
They never have storage in a real run, but a dispatch-mode tracker sees their creation
(7B under fsdp: one whole unsharded float32 gradient, 27 GB, "at" the optimizer step).
The trackers here leave every op inside that propagation untracked.

The trackers work the same on fake and on real tensors, so the benchmark measures a real
run with the very tracker the plan uses (``benchmarks/memory.py``).
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Any
from unittest import mock

import torch
from torch import nn
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker, _FSDPModMemStats
from torch.distributed._tools.mem_tracker import MemTracker, _ModMemStats, _RefType
from torch.distributed._tools.mod_tracker import ModTracker
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor._sharding_prop import ShardingPropagator
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakIdKeyDictionary

TOTAL = "Total"


class _Extra(_RefType):
    LOGITS = "Logits"
    COMM = "Communication"


_ACTIVATION_KINDS = {"Activation", "Temp"}


# The loop calls blocks, the shared norm and the output directly (not through their
# parents), so ModTracker's parent stack sees entries and exits it did not expect and asks
# for a PyTorch bug report; the plan reads per-device totals only, which that does not touch.
warnings.filterwarnings("ignore", "The module hierarchy tracking", UserWarning)


class _ForwardModTracker(ModTracker):
    """ModTracker without its backward hooks.

    ModTracker registers multi-grad hooks on every module's inputs and outputs to follow
    backward; a hook that never completes (a module called head by head, a checkpointed
    block recomputed in backward) keeps its tensors and gradients alive, so a long step
    under the tracker would hold memory the real run frees. The plan reads per-device
    totals only, so module entry/exit in forward (and torch's own backward flag) suffice.
    """

    def _fw_pre_hook(self, mod: nn.Module, input: Any) -> None:  # noqa: A002
        self._get_append_fn(weakref.ref(mod), self._get_mod_name(mod), False)()
        if self._user_pre_fw_hook is not None:
            self._user_pre_fw_hook(mod, input)

    def _fw_post_hook(self, mod: nn.Module, input: Any, output: Any) -> None:  # noqa: A002
        if self._user_post_fw_hook is not None:
            self._user_post_fw_hook(mod, input, output)
        self._get_pop_fn(weakref.ref(mod), self._get_mod_name(mod), False)()


class _ModuleStats(WeakIdKeyDictionary):
    """The trackers' per-module statistics, adapted to the loop's calling pattern.

    The loop calls blocks, the shared norm and the output projection directly, several
    times per step (head by head, chunk by chunk), and never calls the FSDP root's forward;
    the trackers allow one top-level forward per module and expect the root's. So a forward
    always starts a fresh entry (a module is "known" only in backward, where that means
    activation-checkpoint recomputation), and a missing entry is created on demand.
    """

    def __init__(self, tracker: Any, stats: type) -> None:
        super().__init__()
        self.tracker, self.stats = tracker, stats

    def __contains__(self, key: object) -> bool:
        return self.tracker._mod_tracker.is_bw and super().__contains__(key)

    def __getitem__(self, key: Any) -> Any:
        if not super().__contains__(key):
            self[key] = self.stats(self.tracker._mod_tracker.get_known_fqn(key) or "?")
        return super().__getitem__(key)


_META_ONLY = [0]  # > 0 while DTensor's sharding propagation runs (metadata, no storage)
# a private method of recent torch versions; where a torch lacks it nothing is patched
_PROPAGATE = getattr(ShardingPropagator, "_propagate_tensor_meta_non_cached", None)


def _propagate_untracked(self: ShardingPropagator, *args: Any, **kwargs: Any) -> Any:
    _META_ONLY[0] += 1
    try:
        return _PROPAGATE(self, *args, **kwargs)
    finally:
        _META_ONLY[0] -= 1


class _Classify:
    """Mixin: re-label logits-shaped activations and collective buffers; leave DTensor's
    metadata-only tensors untracked."""

    vocab_size: int
    comm_bytes: dict[str, int]
    _patch: Any

    def __enter__(self) -> Any:
        self._patch = (
            mock.patch.object(
                ShardingPropagator, "_propagate_tensor_meta_non_cached", _propagate_untracked
            )
            if _PROPAGATE is not None
            else contextlib.nullcontext()
        )
        self._patch.__enter__()
        return super().__enter__()  # type: ignore[misc]

    def __exit__(self, *args: Any) -> None:
        try:
            super().__exit__(*args)  # type: ignore[misc]
        finally:
            self._patch.__exit__(None, None, None)

    def _track(self, reftype: _RefType, t: torch.Tensor) -> None:  # type: ignore[override]
        if reftype.value in _ACTIVATION_KINDS and t.dim() >= 2 and t.shape[-1] == self.vocab_size:
            reftype = _Extra.LOGITS
        super()._track(reftype, t)  # type: ignore[misc]

    def _update_peak_stats(self, peak_state: Any) -> None:
        # Only the per-device peak (MemTracker also walks every module's statistics on every
        # op, which the plan does not read and which dominates its run time).
        for dev, snap in self._curr_mem_snap.items():  # type: ignore[attr-defined]
            if self._peak_mem.get(dev, 0) < snap[TOTAL]:  # type: ignore[attr-defined]
                self._peak_mem[dev] = snap[TOTAL]  # type: ignore[attr-defined]
                self._peak_mem_snap[dev] = dict(snap)  # type: ignore[attr-defined]

    def _track_module_params_and_buffers(  # type: ignore[override]
        self, module: nn.Module, install_grad_hooks: bool = True
    ) -> tuple[int, int]:
        # frozen weights (critic's policy, rho1's reference) take no gradient hooks
        trained = all(p.requires_grad for p in module.parameters())
        return super()._track_module_params_and_buffers(module, install_grad_hooks and trained)  # type: ignore[misc]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if _META_ONLY[0]:
            return func(*args, **(kwargs or {}))
        out = super().__torch_dispatch__(func, types, args, kwargs)  # type: ignore[misc]
        if func.namespace == "c10d":
            flat, _ = tree_flatten((args, kwargs or {}))
            tensors = [t for t in flat if isinstance(t, torch.Tensor)]
            name = func.__name__.split(".")[0]
            self.comm_bytes[name] = self.comm_bytes.get(name, 0) + max(
                (t.numel() * t.element_size() for t in tensors), default=0
            )
            for t in tensors:
                if not isinstance(t, nn.Parameter):
                    self._update_and_maybe_create_winfos(t, _Extra.COMM)  # type: ignore[attr-defined]
        return out


class PlainTracker(_Classify, MemTracker):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size, self.comm_bytes = vocab_size, {}
        self._mod_tracker = _ForwardModTracker()
        self.memory_tracking = _ModuleStats(self, _ModMemStats)
        self._ref_class = [*self._ref_class, *_Extra]  # type: ignore[assignment]


class ShardedTracker(_Classify, FSDPMemTracker):
    def __init__(self, vocab_size: int, model: nn.Module, optimizer: Any) -> None:
        super().__init__(model, optimizer)
        self.vocab_size, self.comm_bytes = vocab_size, {}
        self._mod_tracker = _ForwardModTracker()
        self.memory_tracking = _ModuleStats(self, _FSDPModMemStats)
        self._ref_class = [*self._ref_class, *_Extra]  # type: ignore[assignment]


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, with the forward-only module tracker (see above)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _ForwardModTracker()
    return counter


def tracker_for(
    vocab_size: int, model: nn.Module, optimizer: torch.optim.Optimizer
) -> PlainTracker | ShardedTracker:
    """FSDPMemTracker for a sharded policy, MemTracker otherwise."""
    if isinstance(model, FSDPModule):
        return ShardedTracker(vocab_size, model, optimizer)
    return PlainTracker(vocab_size)


def peak(tracker: MemTracker) -> tuple[int, dict[str, int]]:
    """(peak bytes, bytes per category at that moment) over every device tracked."""
    total, cats = 0, {}
    for snap in tracker.get_tracker_snapshot("peak").values():
        total += snap.get(TOTAL, 0)
        for k, v in snap.items():
            if k != TOTAL:
                name = k.value if hasattr(k, "value") else str(k)
                cats[name] = cats.get(name, 0) + v
    return total, cats
