"""The evaluation settings and their checks (run before anything is loaded or executed)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from weighted_mtp.config.schema import EvaluationConfig
from weighted_mtp.errors import UserError
from weighted_mtp.evaluation.generate import SamplingParams
from weighted_mtp.sandbox.isolation import ISOLATIONS
from weighted_mtp.sandbox.limits import Limits

DEFAULT_CONTEXT = 4096  # tokens, when the model's params.json has no max_seq_len


class EvalConfig(EvaluationConfig):
    """The evaluation settings (fields: :class:`~weighted_mtp.config.schema.EvaluationConfig`)."""

    def limits(self) -> Limits:
        """The sandbox limits of one program run."""
        return Limits(timeout_s=self.timeout_s, isolation=self.isolation)

    def check(self) -> None:
        """Raise UserError naming every inconsistent field (nothing is loaded or run)."""
        errors = []
        if not self.ks or any(k < 1 for k in self.ks):
            errors.append(f"k must be positive integers, got {self.ks}")
        elif self.n_samples < max(self.ks):
            errors.append(
                f"pass@{max(self.ks)} needs n_samples >= {max(self.ks)} (got {self.n_samples}): "
                "raise --n-samples or lower --k"
            )
        if self.n_samples > 1 and self.temperature == 0:
            errors.append("n_samples > 1 with temperature 0 repeats one greedy sample; set it > 0")
        for name in ("n_samples", "batch_size", "concurrency"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        try:
            SamplingParams(self.max_new_tokens, self.temperature, self.top_p)
        except ValueError as exc:
            errors.append(str(exc))
        if not math.isfinite(self.temperature):
            errors.append(f"temperature must be finite, got {self.temperature}")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            errors.append(f"timeout_s must be a positive number of seconds, got {self.timeout_s}")
        if self.isolation not in ISOLATIONS:
            errors.append(
                f"isolation must be one of {', '.join(ISOLATIONS)}, got {self.isolation!r}"
            )
        if self.limit is not None and self.limit < 1:
            errors.append(f"limit must be >= 1, got {self.limit}")
        if self.speculative_drafts < 0:
            errors.append(
                f"speculative_drafts must be 0 (off) or 1..n_future_tokens-1 of the model, "
                f"got {self.speculative_drafts}"
            )
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            errors.append(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        for name, (lo, hi) in self.difficulty_bins.items():
            if lo > hi:
                errors.append(f"difficulty_bins.{name}: [{lo}, {hi}] is empty (lo > hi)")
        errors += _device_errors(self.device)
        if not Path(self.data).is_file():
            errors.append(f"data file not found: {self.data}")
        if not Path(self.checkpoint).exists():
            errors.append(f"checkpoint not found: {self.checkpoint}")
        if Path(self.out_dir).exists() and not Path(self.out_dir).is_dir():
            errors.append(f"out_dir exists and is not a directory: {self.out_dir}")
        if errors:
            raise UserError("evaluation config: " + "; ".join(errors))


def check_speculative_drafts(drafts: int, n_future_tokens: int) -> None:
    """Raise UserError unless ``drafts`` is 0 (off) or 1..n_future_tokens-1 (the model's
    extra heads), once the model's shape is known."""
    if not 0 <= drafts <= n_future_tokens - 1:
        most = n_future_tokens - 1
        allowed = "only 0 (off)" if most == 0 else f"0 (off) or 1..{most}"
        raise UserError(
            f"evaluation config: speculative_drafts {drafts}: this model has "
            f"n_future_tokens {n_future_tokens} ({most} extra heads to draft with), so "
            f"{allowed} (--speculative-drafts, evaluation.speculative_drafts)"
        )


def _device_errors(name: str) -> list[str]:
    if name == "auto":
        return []
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return [f"device {name!r} is not a torch device (cpu, cuda, cuda:1, mps, auto)"]
    if device.type == "cuda" and not torch.cuda.is_available():
        return [f"device {name!r}: CUDA is not available here; use --device cpu"]
    if device.type == "mps" and not torch.backends.mps.is_available():
        return [f"device {name!r}: MPS is not available here; use --device cpu"]
    return []
