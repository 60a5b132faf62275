"""What every entrypoint does with a composed config: validate, then run its stage."""

from __future__ import annotations

import importlib
from typing import Any

from omegaconf import DictConfig

from weighted_mtp.config.validate import summary, validate
from weighted_mtp.training.distributed import env_info


def run(cfg: DictConfig, *, source: str = "config") -> Any:
    """Validate ``cfg`` (raising ConfigValidationError) and dispatch to its stage.

    A stage is the module ``weighted_mtp.stages.<experiment.stage>`` with a
    ``run(cfg)`` function; adding a stage is that module plus ``conf/stage/<name>.yaml``.
    """
    validate(cfg, source=source)
    if env_info().is_main:
        print(f"Config valid: {source}\n{summary(cfg)}", flush=True)
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
    return module.run(cfg)
