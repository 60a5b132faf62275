"""The plan against a real run (the small version of benchmarks/memory.py): rank 0 planned
on fake tensors vs every rank of a real 2-process gloo run, same memory tracker."""

from __future__ import annotations

from weighted_mtp.config.loader import compose
from weighted_mtp.models.mtp import ModelArgs
from weighted_mtp.plan.check import compare

# Both sides count the same live tensor storages with the same tracker, and memory does
# not depend on the random values, so the ratio is deterministic. What differs: the plan
# answers data-dependent ops as if every target were valid (the real batch has no targets
# past each sequence's end, so its logits chunks are a few rows smaller). Measured at this
# size: 0.997 .. 1.003 for every stage and mode (benchmarks/memory.py --small). The
# benchmark's target is 15%; this test holds the plan to 5%.
TOLERANCE = 0.05


def test_planned_peak_matches_a_real_fsdp_run() -> None:
    cfg = compose(
        [
            "stage=baseline",
            "profile=local",
            "runtime.distributed=fsdp",
            "runtime.mixed_precision=true",
            "dataset.max_length=64",
            "training.batch_size=1",
            "training.gradient_accumulation_steps=2",
        ]
    )
    args = ModelArgs(dim=64, n_layers=6, n_heads=4, vocab_size=512, n_future_tokens=4)
    c = compare(cfg, args, None, world_size=2)
    assert len(c.measured) == 2 and all(m > 0 for m in c.measured)
    for ratio in c.ratios:
        assert abs(ratio - 1) <= TOLERANCE, c
