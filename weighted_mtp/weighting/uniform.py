"""Uniform weighting: every valid target weighs 1 (the baseline MTP loss)."""

from __future__ import annotations

from torch import Tensor

from weighted_mtp.weighting.base import Weighting, WeightingInputs


class UniformWeighting(Weighting):
    def weights(self, inputs: WeightingInputs) -> Tensor:
        return inputs.valid.float()
