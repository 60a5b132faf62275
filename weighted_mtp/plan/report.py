"""The plan's answer: memory by category, throughput, fit verdict; as text or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

GB = 1e9  # the plan reports decimal GB, as GPU memory is sold (A100-80GB = 80e9 bytes)
HEADROOM = 0.10  # a profile must leave this share of the GPU free (allocator, CUDA context)


@dataclass
class Plan:
    stage: str
    gpus: int
    distributed: str
    per_gpu_peak_gb: float
    training_peak_gb: float
    validation_peak_gb: float
    reference_pass_peak_gb: float
    gpu_memory_gb: float | None
    components: dict[str, float]  # name -> GB at the training peak
    host_ram_gb_per_node: float
    tokens_per_step: int
    flops_per_step: float
    step_time_s: float
    compute_time_s: float
    comm_time_s: float
    optimizer_steps: int
    run_hours: float
    mfu: float
    peak_tflops: float
    interconnect_gbps: float
    policy_shape: str
    n_blocks: int  # the policy's transformer blocks (trunk + heads)
    reference_shape: str | None = None
    fix: str | None = None  # the change that makes the run fit, when it does not
    assumptions: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool | None:
        """None when no GPU memory is known; else peak <= (1 - HEADROOM) x memory."""
        if self.gpu_memory_gb is None:
            return None
        return self.per_gpu_peak_gb <= (1 - HEADROOM) * self.gpu_memory_gb

    def to_json(self) -> str:
        d = asdict(self)
        d["fits"] = self.fits
        d["headroom"] = HEADROOM
        return json.dumps(d, indent=2)

    def to_text(self) -> str:
        lines = [
            f"plan: stage {self.stage}, {self.gpus} GPU(s), runtime.distributed={self.distributed}",
            f"  policy shape: {self.policy_shape}"
            + (f"; reference shape: {self.reference_shape}" if self.reference_shape else ""),
            "",
            "per-GPU memory at the training peak (GB):",
        ]
        width = max(len(k) for k in self.components) if self.components else 10
        for name, gb in self.components.items():
            lines.append(f"  {name:<{width}}  {gb:8.2f}")
        lines += [
            f"  {'training peak':<{width}}  {self.training_peak_gb:8.2f}",
            f"  {'validation peak':<{width}}  {self.validation_peak_gb:8.2f}",
            *(
                [f"  {'reference pass peak':<{width}}  {self.reference_pass_peak_gb:8.2f}"]
                if self.reference_pass_peak_gb
                else []
            ),
            f"  {'per-GPU peak':<{width}}  {self.per_gpu_peak_gb:8.2f}",
            "",
            f"host RAM per node at load: {self.host_ram_gb_per_node:.1f} GB",
            f"tokens per optimizer step: {self.tokens_per_step:,}",
            f"FLOPs per optimizer step:  {self.flops_per_step:.3e}",
            f"step time: {self.step_time_s:.2f} s (compute {self.compute_time_s:.2f} s at "
            f"{self.mfu:.0%} MFU of {self.peak_tflops:g} TFLOPS, exposed communication "
            f"{self.comm_time_s:.2f} s at {self.interconnect_gbps:g} GB/s)",
            f"run: {self.optimizer_steps:,} optimizer steps = {self.run_hours:.1f} h",
            "",
        ]
        if self.fits is None:
            lines.append("fit: no GPU memory given (--gpu-memory-gb or runtime.gpu_memory_gb)")
        else:
            limit = (1 - HEADROOM) * (self.gpu_memory_gb or 0)
            verdict = "fits" if self.fits else "does not fit"
            lines.append(
                f"{verdict}: {self.per_gpu_peak_gb:.1f} GB per GPU vs {limit:.1f} GB usable "
                f"({self.gpu_memory_gb:g} GB less {HEADROOM:.0%} headroom)"
            )
            if self.fix:
                lines.append(f"  to fit: {self.fix}")
        if self.assumptions:
            lines += ["", "assumptions:"] + [f"  - {a}" for a in self.assumptions]
        return "\n".join(lines)
