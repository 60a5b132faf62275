"""Value head V(s_t) on the trunk's hidden state: [B,S,D] -> [B,S].

The trunk output is the un-normalised residual stream, so the head starts with its own
RMSNorm; then ``linear`` (one projection), ``mlp`` (D -> hidden -> 1, SiLU) or
``prefix_max``: the mlp on ``[h_t, max_{j<=t} W h_j]`` (D + hidden -> hidden -> 1), a
running maximum of a learned projection over the prefix, so V(s_t) can see a feature of
any earlier state (a wrong token early in a program) and not only of the last one. It is
still a function of the prefix s_t (causal; right padding never enters it). It keeps
fp32 parameters whatever the policy's dtype (it is tiny) and computes and returns fp32
values, also inside the training's autocast.

It is saved in the training checkpoint (``value_head.<key>`` weights, its config in
``state.json``), which the verifiable stage reads (``experiment.critic_checkpoint``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weighted_mtp.errors import UserError
from weighted_mtp.models.mtp import RMSNorm

VALUE_HEAD_TYPES = ("linear", "mlp", "prefix_max")


class ValueHead(nn.Module):
    """V(s_t) per position. type: linear | mlp | prefix_max; hidden_dim 0 = dim (not linear)."""

    def __init__(self, dim: int, type: str = "linear", hidden_dim: int = 0) -> None:  # noqa: A002
        super().__init__()
        if type not in VALUE_HEAD_TYPES:
            raise UserError(f"models.value_head.type {type!r}: use one of {VALUE_HEAD_TYPES}")
        self.dim, self.type = dim, type
        self.hidden_dim = hid = (hidden_dim or dim) if type != "linear" else 0
        self.norm = RMSNorm(dim)
        self.pool = nn.Linear(dim, hid) if type == "prefix_max" else None
        if type == "linear":
            self.net: nn.Module = nn.Linear(dim, 1)
        else:
            width = dim + hid if type == "prefix_max" else dim
            self.net = nn.Sequential(nn.Linear(width, hid), nn.SiLU(), nn.Linear(hid, 1))
        nn.init.zeros_(self.out_proj.weight)  # V = 0 everywhere at start
        nn.init.zeros_(self.out_proj.bias)

    @property
    def out_proj(self) -> nn.Linear:
        return self.net if isinstance(self.net, nn.Linear) else self.net[-1]

    def config(self) -> dict[str, int | str]:
        return {"dim": self.dim, "type": self.type, "hidden_dim": self.hidden_dim}

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden [B,S,D] (any dtype) -> values [B,S] fp32, also under autocast."""
        with torch.autocast(hidden.device.type, enabled=False):
            x = self.norm(hidden.float())
            if self.pool is not None:  # running max over positions 0..t (causal)
                x = torch.cat([x, self.pool(x).cummax(dim=1).values], dim=-1)
            return self.net(x).squeeze(-1)
