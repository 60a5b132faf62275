"""The plan's answer: memory by category, throughput, fit verdict; as text or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from weighted_mtp import cuda_alloc

GB = 1e9  # the plan reports decimal GB (1e9 bytes)
GIB = 2**30
# The fit rule, against the card's real capacity. A GPU's "GB" (``--gpu-memory-gb``,
# ``runtime.gpu_memory_gb``) is read as GiB, as the cards are sold: an "80 GB" A100 has
# 80 GiB = 85.9e9 bytes (81920 MiB in nvidia-smi), a "40 GB" one 40 GiB = 42.9e9 bytes.
# From that capacity come off:
CUDA_CONTEXT_BYTES = 1 * GIB  # CUDA context + kernel images of one process (0.5-1 GiB)
NCCL_BYTES_PER_COMMUNICATOR = GIB // 2  # NCCL's own buffers per process group (>1 GPU)
# and the peak the plan counts (live tensors = torch.cuda.max_memory_allocated) grows to
# what the caching allocator reserves by this ratio (measured on an H200, 7B MTP step):
RESERVED_PER_ALLOCATED = cuda_alloc.RESERVED_PER_ALLOCATED


def capacity_bytes(gpu_memory_gb: float) -> float:
    return gpu_memory_gb * GIB


def allocator_ratio(expandable: bool | None = None) -> float:
    """reserved / allocated of the allocator setting the run will have (by default the
    one this process's entry point set: expandable segments unless the user chose)."""
    if expandable is None:
        expandable = cuda_alloc.current().expandable or cuda_alloc.current().source == "unset"
    return RESERVED_PER_ALLOCATED["expandable_segments" if expandable else "fixed_segments"]


def usable_bytes(gpu_memory_gb: float, communicators: int, ratio: float) -> float:
    """The largest planned (allocated) peak that fits: (capacity - CUDA context - NCCL
    buffers) / reserved-per-allocated."""
    overhead = CUDA_CONTEXT_BYTES + communicators * NCCL_BYTES_PER_COMMUNICATOR
    return (capacity_bytes(gpu_memory_gb) - overhead) / ratio


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
    nodes: int = 1
    gpus_per_node: int = 0  # 0: all of ``gpus``
    inter_node_gbps: float = 0.0  # Gbit/s per GPU between nodes (nodes > 1)
    inter_node_time_s: float = 0.0  # the cross-node gradient all-reduce of one step
    micro_batch: tuple[int, int] = (0, 0)  # (batch_size, accumulation) planned per GPU
    communicators: int = 0  # NCCL process groups of one rank
    allocator_ratio: float = RESERVED_PER_ALLOCATED["expandable_segments"]

    @property
    def usable_gb(self) -> float | None:
        """The largest per-GPU peak (allocated, GB) that fits; None without GPU memory."""
        if self.gpu_memory_gb is None:
            return None
        return usable_bytes(self.gpu_memory_gb, self.communicators, self.allocator_ratio) / GB

    @property
    def fits(self) -> bool | None:
        """None when no GPU memory is known; else peak <= :attr:`usable_gb`."""
        usable = self.usable_gb
        return None if usable is None else self.per_gpu_peak_gb <= usable

    def fit_rule(self) -> str:
        if self.gpu_memory_gb is None:
            return "no GPU memory given (--gpu-memory-gb or runtime.gpu_memory_gb)"
        cap = capacity_bytes(self.gpu_memory_gb) / GB
        ctx = CUDA_CONTEXT_BYTES / GB
        nccl = self.communicators * NCCL_BYTES_PER_COMMUNICATOR / GB
        return (
            f"fits when peak x {self.allocator_ratio:.3f} (allocator reserved/allocated) + "
            f"{ctx:.2f} GB CUDA context + {nccl:.2f} GB NCCL ({self.communicators} "
            f"communicator(s)) <= {cap:.1f} GB ({self.gpu_memory_gb:g} GiB card): "
            f"peak <= {self.usable_gb:.1f} GB"
        )

    def to_json(self) -> str:
        d = asdict(self)
        d["fits"] = self.fits
        d["usable_gb"] = self.usable_gb
        d["fit_rule"] = self.fit_rule()
        return json.dumps(d, indent=2)

    def to_text(self) -> str:
        layout = (
            f"{self.nodes} node(s) x {self.gpus_per_node} GPU(s)"
            if self.nodes > 1
            else f"{self.gpus} GPU(s)"
        )
        b, a = self.micro_batch
        lines = [
            f"plan: stage {self.stage}, {layout}, runtime.distributed={self.distributed}, "
            f"micro-batch {b} x {a} accumulation per GPU",
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
            f"{self.comm_time_s:.2f} s at {self.interconnect_gbps:g} GB/s"
            + (
                f", of which {self.inter_node_time_s:.2f} s between nodes at "
                f"{self.inter_node_gbps:g} Gb/s per GPU)"
                if self.nodes > 1
                else ")"
            ),
            f"run: {self.optimizer_steps:,} optimizer steps = {self.run_hours:.1f} h",
            "",
        ]
        if self.fits is None:
            lines.append("fit: " + self.fit_rule())
        else:
            verdict = "fits" if self.fits else "does not fit"
            lines += [
                f"{verdict}: {self.per_gpu_peak_gb:.1f} GB per GPU vs {self.usable_gb:.1f} GB "
                "usable",
                f"  rule: {self.fit_rule()}",
            ]
            if self.fix:
                lines.append(f"  to fit: {self.fix}")
        if self.assumptions:
            lines += ["", "assumptions:"] + [f"  - {a}" for a in self.assumptions]
        return "\n".join(lines)
