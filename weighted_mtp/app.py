"""What every entrypoint does with a composed config: validate, then run its stage."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from weighted_mtp.config.validate import summary, validate
from weighted_mtp.distributed import env_info
from weighted_mtp.errors import UserError, fix


def run(cfg: DictConfig, *, source: str = "config") -> Any:
    """Validate ``cfg`` (raising ConfigValidationError) and dispatch to its stage.

    A stage is the module ``weighted_mtp.stages.<experiment.stage>`` with a
    ``run(cfg)`` function; adding a stage is that module plus ``conf/stage/<name>.yaml``.
    """
    from weighted_mtp.progress import quiet_third_party_bars

    quiet_third_party_bars()
    validate(cfg, source=source)
    check_runtime(cfg)
    warning = check_save_dir(cfg)
    if env_info().is_main:
        print(f"Config valid: {source}\n{summary(cfg)}", flush=True)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    stage = cfg.experiment.stage
    try:
        module = importlib.import_module(f"weighted_mtp.stages.{stage}")
    except ModuleNotFoundError as exc:
        if exc.name != f"weighted_mtp.stages.{stage}" and exc.name != "weighted_mtp.stages":
            raise
        raise NotImplementedError(
            f"stage {stage!r} has a config (conf/stage/{stage}.yaml) but no implementation "
            f"(weighted_mtp/stages/{stage}.py)"
        ) from None
    result = module.run(cfg)
    if env_info().is_main:
        print_run_dir()
    return result


def check_save_dir(cfg: DictConfig) -> str | None:
    """Refuse a fresh run whose ``checkpoint.save_dir`` holds another run's checkpoints
    (a UserError with the fixes); a warning for a re-run of the same config."""
    from omegaconf import OmegaConf

    from weighted_mtp.training.checkpoint.reader import absolute_paths
    from weighted_mtp.training.checkpoint.save_dir import refuse_overwrite

    config = absolute_paths(OmegaConf.to_container(cfg, resolve=True))
    return refuse_overwrite(Path(cfg.checkpoint.save_dir), config, cfg.checkpoint.resume)


def print_run_dir() -> None:
    """Under ``wmtp``: the job's output dir (its log, result.json and .hydra/ config)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        out = HydraConfig.get().runtime.output_dir
        print(f"  run dir: {out} (log, result.json, .hydra/config.yaml)", flush=True)


def check_runtime(cfg: DictConfig) -> None:
    """What only this machine and the run's assets can tell: the device exists, and
    ``dataset.max_length`` holds the prompt format plus one response token."""
    import torch

    from weighted_mtp.data.collate import format_prompt
    from weighted_mtp.models.tokenizer import config_tokenizer_path, load_tokenizer

    device = cfg.runtime.device
    kind = device.split(":")[0]
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "cuda" and (n_cuda == 0 or (":" in device and int(device[5:]) >= n_cuda)):
        raise UserError(
            f"runtime.device={device}: this machine has {n_cuda} CUDA device(s) "
            "(torch.cuda.is_available() is False or the index is too high). Fix: "
            "--override runtime.device=auto (or cpu), or run on a GPU node"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(
            f"runtime.device=mps: MPS is not available here. Fix: {fix('runtime.device=auto')}"
        )
    tok = load_tokenizer(config_tokenizer_path(cfg))
    template = 1 + len(tok.encode(format_prompt("", "")))  # BOS + the fixed prompt text
    if cfg.dataset.max_length < template + 1:
        raise UserError(
            f"dataset.max_length={cfg.dataset.max_length} is too small for the prompt format: "
            f"its fixed text (### Instruction: ... ### Response:) alone takes {template} tokens "
            f"with this tokenizer, plus one response token. Fix: --override "
            f"dataset.max_length={max(512, template + 1)} (at least {template + 1})"
        )
