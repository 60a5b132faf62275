"""Per-token loss weighting objects, chosen in config by ``weighting._target_``.

Every weighting turns a batch (plus the value head's V(s_t) or the reference model's
per-token losses, when it asks for them) into per-head per-token weights ``[B, S, n]``.
"""

from weighted_mtp.weighting.base import HeadWeightFn, StepInputs, Weighting, WeightingInputs
from weighted_mtp.weighting.rho1 import RandomKeepWeighting, Rho1Weighting
from weighted_mtp.weighting.td import TDErrorWeighting
from weighted_mtp.weighting.uniform import UniformWeighting

__all__ = [
    "HeadWeightFn",
    "RandomKeepWeighting",
    "Rho1Weighting",
    "StepInputs",
    "TDErrorWeighting",
    "UniformWeighting",
    "Weighting",
    "WeightingInputs",
]
