"""LoRA adapters on the MTP policy, through Hugging Face ``peft`` (no hand-written layer).

``models.policy.lora`` (:class:`~weighted_mtp.config.schema.PolicyLoraConfig`) names the
Meta-layout linear layers to adapt (:data:`TARGETS`); peft matches them by module name in
every block, trunk and heads alike (``layers.*``, ``extra_heads.*``), and ``output`` is the
shared vocabulary projection. :func:`apply` injects the adapters into an already loaded
(plain or FSDP-sharded) policy: the base weights stay frozen in their storage dtype, the
adapters are float32, ``lora_A`` initialised by peft from ``runtime.seed`` (the same on
every rank) and ``lora_B`` zero, so the adapted model starts equal to the base.

On disk an adapter is peft's format: ``adapter_config.json`` (a ``LoraConfig``) and
``adapter_model.safetensors`` with peft's keys (``base_model.model.<module>.lora_A.weight``),
so ``peft.PeftModel.from_pretrained(base, directory)`` loads it onto an
:class:`~weighted_mtp.models.mtp.MTPTransformer`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from peft import LoraConfig, LoraModel

# the adaptable linear layers, by their Meta-layout name (attention, feed-forward, output)
TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "output")
ADAPTER = "default"  # peft's adapter name (one adapter per model)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # how PeftModel.save_pretrained prefixes its keys


def lora_config(
    r: int, alpha: float, dropout: float, targets: list[str], base: str = "", **extra: Any
) -> LoraConfig:
    """The peft ``LoraConfig`` of ``models.policy.lora`` (no bias adapters)."""
    from peft import LoraConfig

    return LoraConfig(
        r=int(r),
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=sorted(targets),
        bias="none",
        base_model_name_or_path=base or None,
        **extra,
    )


def config_of(cfg: Any) -> LoraConfig | None:
    """The ``LoraConfig`` of a run config (``models.policy.lora``), None when disabled."""
    section = cfg.models.policy.lora
    if not section.enabled:
        return None
    return lora_config(
        section.r, section.alpha, section.dropout, list(section.target_modules),
        str(cfg.models.policy.path),
    )  # fmt: skip


def apply(model: nn.Module, config: LoraConfig, seed: int = 0) -> LoraModel:
    """Inject ``config``'s adapters into ``model`` in place; returns peft's tuner (its
    ``merge_and_unload()`` gives the merged model back).

    Only the adapters require gradients; they are float32 whatever the base's dtype, and
    initialised from ``seed`` without touching the global random stream.
    """
    from peft import LoraModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tuner = LoraModel(model, config, ADAPTER)
        for layer in layers(model):
            for d in (layer.lora_A, layer.lora_B):
                d[ADAPTER].float()
            layer.reset_lora_parameters(ADAPTER, config.init_lora_weights)  # in float32
    return tuner


def layers(model: nn.Module) -> list[nn.Module]:
    """The LoRA-adapted layers of ``model`` (peft's ``LoraLayer`` modules)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def is_adapted(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable adapter parameters, frozen base parameters) of an adapted model."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters()) - trainable


def expected_parameters(model: nn.Module, r: int, targets: list[str]) -> int:
    """LoRA's formula: r x (in + out) per adapted linear layer (A: r x in, B: out x r)."""
    return sum(
        r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )


# --- names: module parameters <-> peft's file keys ----------------------------------------
def is_adapter_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def file_key(name: str) -> str:
    """``layers.0.attention.wq.lora_A.default.weight`` -> peft's on-disk key
    ``base_model.model.layers.0.attention.wq.lora_A.weight``."""
    return PEFT_PREFIX + name.replace(f".{ADAPTER}.", ".")


def param_name(key: str) -> str:
    """Inverse of :func:`file_key`."""
    name = key.removeprefix(PEFT_PREFIX)
    for part in ("lora_A", "lora_B"):
        name = name.replace(f".{part}.", f".{part}.{ADAPTER}.")
    return name


def split(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """An adapted model's (base state dict with Meta keys, adapter tensors by peft file
    key). After :func:`merge` the base state dict holds the merged weights."""
    base, adapter = {}, {}
    for name, t in model.state_dict().items():
        if is_adapter_key(name):
            adapter[file_key(name)] = t
        else:
            base[name.replace(".base_layer.", ".")] = t
    return base, adapter


def merge(model: nn.Module) -> None:
    """Merge every adapter into its base weight, in place (peft's ``LoraLayer.merge``)."""
    with torch.no_grad():
        for layer in layers(model):
            layer.merge()


# --- files -----------------------------------------------------------------------------------
def write(directory: Path, config: LoraConfig, tensors: dict[str, Tensor]) -> list[str]:
    """Write peft's adapter files into ``directory``: ``tensors`` keyed by parameter name
    (:func:`file_key` renames them). Returns the file names."""
    from safetensors.torch import save_file

    config.save_pretrained(str(directory))
    out = {file_key(k): v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(out, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    return [CONFIG_FILE, WEIGHTS_FILE]


def read_config(path: Path) -> LoraConfig:
    """A ``LoraConfig`` from an ``adapter_config.json`` (plain JSON, no code)."""
    from peft import LoraConfig

    data = json.loads(path.read_text(encoding="utf-8"))
    known = set(LoraConfig.__dataclass_fields__)
    return LoraConfig(**{k: v for k, v in data.items() if k in known})


def same_settings(a: LoraConfig, b: LoraConfig) -> list[str]:
    """The settings that differ between two adapters (empty: the same adapter shape and
    function)."""
    fields = {"r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}
    out = [
        f"{name}: {getattr(a, f)!r} -> {getattr(b, f)!r}"
        for f, name in fields.items()
        if getattr(a, f) != getattr(b, f)
    ]
    if set(a.target_modules or ()) != set(b.target_modules or ()):
        out.append(f"target_modules: {sorted(a.target_modules)} -> {sorted(b.target_modules)}")
    return out


def attach(model: nn.Module, config: LoraConfig, tensors: dict[str, Tensor]) -> LoraModel:
    """``model`` with the adapter ``tensors`` (peft file keys) loaded; returns the tuner."""
    from weighted_mtp.errors import UserError

    tuner = apply(model, config)
    params = dict(model.named_parameters())
    names = {param_name(k): k for k in tensors}
    wanted = {n for n in params if is_adapter_key(n)}
    if set(names) != wanted:
        missing, extra = sorted(wanted - set(names)), sorted(set(names) - wanted)
        raise UserError(
            f"adapter weights do not match their adapter_config.json: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for name, key in names.items():
            p = params[name]
            if tuple(p.shape) != tuple(tensors[key].shape):
                raise UserError(
                    f"adapter tensor {key}: shape {tuple(tensors[key].shape)}, the model "
                    f"needs {tuple(p.shape)} (another base model or rank)"
                )
            p.copy_(tensors[key])
    return tuner
