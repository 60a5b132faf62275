"""Typed configuration schema (Hydra structured configs).

Every section of the user's config reference is a dataclass here. The root
``WmtpConfig`` is registered in Hydra's ConfigStore as ``wmtp_schema`` and sits
first in ``conf/config.yaml``'s defaults list, so every YAML file and every
command-line override is merged *onto* it: an unknown key (``training.batch_sz``)
or a value of the wrong type (``training.batch_size=abc``) fails at composition
time, naming the key.

Required fields are ``MISSING`` (``???``); stage-specific fields are ``None``
by default and are checked by :mod:`weighted_mtp.config.validate` for the stage
that needs them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from weighted_mtp.data.curriculum import DEFAULT_DIFFICULTY_BINS

SCHEMA_NAME = "wmtp_schema"
EVAL_SCHEMA_NAME = "wmtp_eval_schema"


@dataclass
class ExperimentConfig:
    name: str = MISSING
    stage: str = MISSING
    description: str = ""
    tags: list[str] = field(default_factory=list)
    critic_checkpoint: str | None = None


@dataclass
class PolicyLoraConfig:
    """LoRA adapters through peft (weighted_mtp.models.lora): the base frozen in ``dtype``."""

    enabled: bool = False
    r: int = 16  # adapter rank
    alpha: float = 32.0  # scaling alpha / r
    dropout: float = 0.0  # dropout on the adapters' input
    # Meta-layout linear layers adapted in every block (wq wk wv wo w1 w2 w3) and/or output
    target_modules: list[str] = field(
        default_factory=lambda: ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]
    )


@dataclass
class PolicyModelConfig:
    name: str = ""
    path: str = MISSING
    tokenizer_path: str | None = None
    dtype: str = "float32"
    lora: PolicyLoraConfig = field(default_factory=PolicyLoraConfig)


@dataclass
class ReferenceModelConfig:
    name: str = ""
    path: str | None = None
    dtype: str = "float32"
    # where the reference's per-token losses are cached (rho1), one subdir per cache key
    cache_dir: str = "storage/cache/reference"


@dataclass
class ValueHeadConfig:
    type: str = "linear"  # linear | mlp
    hidden_dim: int = 0  # mlp only; 0 = the model's dim


@dataclass
class ModelsConfig:
    policy: PolicyModelConfig = field(default_factory=PolicyModelConfig)
    reference: ReferenceModelConfig = field(default_factory=ReferenceModelConfig)
    value_head: ValueHeadConfig = field(default_factory=ValueHeadConfig)


@dataclass
class DatasetConfig:
    name: str = MISSING
    train: str = MISSING
    validation: str = MISSING
    max_length: int = 2048


@dataclass
class CurriculumPhase:
    epoch_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    difficulty_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class DataSamplingConfig:
    # the sampler class; built with these fields plus index, n_epochs, rank, world_size
    _target_: str = "weighted_mtp.data.sampling.RecordSampler"
    n_samples: int = 100000
    correct_ratio: float = 1.0
    balance_correct: bool = False
    seed: int = 42
    curriculum_learning: bool = False
    difficulty_bins: dict[str, list[int]] = field(
        default_factory=lambda: copy.deepcopy(DEFAULT_DIFFICULTY_BINS)
    )
    curriculum_schedule: list[CurriculumPhase] = field(default_factory=list)
    # drop records outside every bin (with a warning) instead of failing with exit 2
    allow_unbinned: bool = False


@dataclass
class TrainingConfig:
    n_epochs: float = MISSING
    batch_size: int = MISSING
    gradient_accumulation_steps: int = 1
    learning_rate: float = MISSING
    max_grad_norm: float = 1.0
    log_interval: int = 1
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # cosine | linear | constant (after warmup)
    warmup_ratio: float = 0.0  # share of optimizer steps spent warming up linearly
    min_lr_ratio: float = 0.0  # cosine/linear decay floor, as a share of learning_rate
    eval_samples: int = 64  # validation records scored at each checkpoint interval
    activation_checkpointing: bool = False
    # with activation_checkpointing: how many blocks recompute in backward, trunk blocks
    # first (selective checkpointing, less recompute); None = every block
    activation_checkpointing_blocks: int | None = None
    # regional torch.compile of every trunk and head block (weighted_mtp.training.compile)
    compile: bool = False
    # tokens per vocabulary-projection chunk of the head-by-head MTP loss (peak logits
    # memory: chunk x vocab fp32; weighted_mtp.training.losses)
    loss_chunk_size: int = 1024
    # critic: host memory (MB) for the frozen trunk's outputs, reused by later epochs and
    # validations instead of a forward (weighted_mtp.training.trunk_cache); 0 = off
    frozen_trunk_cache_mb: float = 0.0
    # value head targets (critic, verifiable): TD(lambda); gamma=lam=1 is Monte-Carlo R
    gamma: float = 1.0
    lam: float = 1.0
    # verifiable (TD-error weighting)
    beta: float | None = None
    value_coef: float | None = None
    weight_clip_min: float | None = None
    weight_clip_max: float | None = None
    # TD weighting knobs (weighted_mtp.weighting.td), off by default (the seed's rule):
    # GAE lambda of the advantage in exp(A / beta) (0 = the one-step TD error)
    advantage_lambda: float = 0.0
    # none | step: advantages standardised over the optimizer step's response tokens
    advantage_norm: str = "none"
    # which records the policy's MTP loss sees: all | correct (value head: all)
    policy_records: str = "all"
    # critic value loss
    loss_type: str = "mse"
    # rho1
    temperature: float | None = None
    k_percent: float | None = None
    selection_scope: str | None = None  # step (all micro-batches, all ranks) | micro_batch


@dataclass
class CheckpointConfig:
    save_dir: str = "storage/checkpoints/${experiment.stage}/${experiment.name}"
    save_checkpoint_every: float = 0.5
    save_best: bool = True
    save_final: bool = True
    save_total_limit: int = 2
    resume: str = ""  # "" (start fresh) | auto (newest valid in save_dir) | a checkpoint dir
    # fields a resumed run may change although they alter the data plan or schedule
    # (weighted_mtp.training.checkpoint.compat.ALLOWABLE); [] = refuse every change
    allow_config_change: list[str] = field(default_factory=list)


@dataclass
class RuntimeConfig:
    device: str = "auto"
    seed: int = 42
    mixed_precision: bool = True
    amp_dtype: str = "bfloat16"  # bfloat16 (autocast) | float16 (autocast + grad scaler)
    # data parallelism under torchrun/Slurm: ddp (a replica per rank) | fsdp (FSDP2 shards
    # over every rank) | hsdp (FSDP2 shards within a node, replicas across nodes)
    distributed: str = "ddp"
    # nodes the ranks run on (hsdp: the number of replicas; ranks per node = the shard
    # group); None = from the launcher's environment (torchrun's WORLD_SIZE /
    # LOCAL_WORLD_SIZE, Slurm's SLURM_NNODES)
    nodes: int | None = None
    # memory of one GPU in GB: when set, validation plans the run (weighted_mtp.plan, fake
    # tensors) and fails if it would not fit; None = not checked
    gpu_memory_gb: float | None = None


@dataclass
class MlflowConfig:
    tracking_uri: str = ""
    experiment: str = ""
    s3_artifacts: str = ""


@dataclass
class WmtpConfig:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data_sampling: DataSamplingConfig = field(default_factory=DataSamplingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    # The weighting object, built by hydra.utils.instantiate from its _target_
    # (conf/stage/*.yaml); None for the critic stage, which has no MTP loss.
    weighting: Any = None


@dataclass
class EvaluationConfig:
    """pass@k of a checkpoint on a processed split with tests (``wmtp-eval``,
    ``python -m weighted_mtp evaluate``)."""

    checkpoint: str = MISSING  # a training checkpoint directory or a Meta model dir
    data: str = MISSING  # processed jsonl with tests (synthetic, humaneval, codecontests)
    out_dir: str = "storage/eval"  # results.jsonl + summary.json
    ks: list[int] = field(default_factory=lambda: [1])
    n_samples: int = 1  # programs per problem (>= max ks)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 16  # prompts per generation batch
    limit: int | None = None  # first N problems only
    concurrency: int = 2  # programs executed at once
    timeout_s: float = 5.0  # wall-clock limit per program run
    isolation: str = "bwrap"  # "bwrap" (OS-level sandbox) | "none" (Python guards only; warns)
    max_prompt_tokens: int | None = None  # longer prompts are skipped; None = model context
    skip_invalid: bool = False  # skip (and count) malformed lines of `data`
    seed: int = 0
    device: str = "cpu"
    difficulty_bins: dict[str, list[int]] = field(
        default_factory=lambda: copy.deepcopy(DEFAULT_DIFFICULTY_BINS)
    )
    mlflow_uri: str = ""  # "" = off
    mlflow_experiment: str = ""
    run_name: str = ""
    # greedy evaluations only: also decode each prompt self-speculatively with this many
    # MTP-head drafts per forward (1..n_future_tokens-1) and record acceptance, tokens per
    # forward and identity with greedy (evaluation/spec_summary.py); 0 = off
    speculative_drafts: int = 0


@dataclass
class EvalRootConfig:
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


def register_schema() -> None:
    """Register the root schemas in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=WmtpConfig)
    ConfigStore.instance().store(name=EVAL_SCHEMA_NAME, node=EvalRootConfig)


def structured(data: Any | None = None) -> DictConfig:
    """Return ``data`` (a dict or DictConfig) merged onto the typed schema.

    Raises omegaconf's ``ConfigKeyError`` / ``ValidationError`` for unknown keys
    or values of the wrong type.
    """
    schema = OmegaConf.structured(WmtpConfig)
    if data is None:
        return schema
    return OmegaConf.merge(schema, data)
