"""Reading checkpoints: verified against their manifest, no code loaded.

A checkpoint directory holds ``state.json`` (step, epoch, stage, scheduler, scaler,
sampler, RNG skeleton, best, provenance, data fingerprint), ``config.yaml`` (the resolved
config), ``weights*.safetensors`` (trainable modules: ``policy.<key>``,
``value_head.<key>``), ``optimizer*.safetensors`` + its skeleton in ``state.json``,
``rng.safetensors`` and ``manifest.json``. A file is used only after its size and sha256
match the manifest. Old single-file ``.pt`` checkpoints (a pickle) are never unpickled
here: the error names the one-line migration command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from weighted_mtp.models.value_head import ValueHead
from weighted_mtp.training.checkpoint.files import (
    CONFIG,
    MANIFEST,
    STATE,
    CheckpointError,
    Manifest,
    sha256_file,
)
from weighted_mtp.training.checkpoint.schema import check_dtypes, check_rng, check_state
from weighted_mtp.training.checkpoint.tensors import PartReader, decode

# config fields holding paths: stored absolute, plus relative to the checkpoint
PATH_FIELDS = (
    "models.policy.path",
    "models.policy.tokenizer_path",
    "models.reference.path",
    "dataset.train",
    "dataset.validation",
    "experiment.critic_checkpoint",
)


def migrate_hint(path: Path) -> str:
    return f"python -m weighted_mtp checkpoint migrate {path}"


def is_checkpoint(path: Path) -> bool:
    """A training checkpoint (current format: a directory with a manifest or state.json;
    an old pickle format: a ``.pt`` file or a directory with ``meta.pt``)."""
    if path.is_dir():
        return any((path / n).is_file() for n in (MANIFEST, STATE, "meta.pt"))
    return path.suffix == ".pt"


class Checkpoint:
    """One checkpoint directory, opened and verified lazily file by file."""

    def __init__(self, path: str | Path) -> None:
        self.path = p = Path(path)
        if p.is_file():
            raise CheckpointError(
                f"{p}: a single-file checkpoint of the old pickle format, which can run code "
                f"when loaded, so it is not read; convert it once with: {migrate_hint(p)}"
            )
        if not p.is_dir():
            raise CheckpointError(f"checkpoint not found: {p}")
        if (p / "meta.pt").is_file() and not (p / MANIFEST).is_file():
            raise CheckpointError(
                f"{p}: an fsdp checkpoint of the old pickle format (meta.pt + DCP .metadata); "
                "it cannot be read safely: train again, or resume it with the weighted_mtp "
                "version that wrote it and save a new checkpoint"
            )
        self.manifest = Manifest(p)
        state_file = self.manifest.path(STATE)
        try:
            self.meta: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{state_file}: not valid JSON ({exc})") from None
        check_state(state_file, self.meta)
        if CONFIG not in self.manifest.files:
            raise CheckpointError(
                f"{p / CONFIG}: missing; a checkpoint without its config cannot be resumed, "
                "evaluated or exported (its model path and settings are unknown)"
            )
        cfg_file = self.manifest.path(CONFIG)
        try:
            self.config: dict[str, Any] = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{cfg_file}: not valid YAML ({exc})") from None
        if not isinstance(self.config, dict):
            raise CheckpointError(f"{cfg_file}: not a config mapping")

    @property
    def stage(self) -> str:
        return self.meta["stage"]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def part(self, name: str) -> PartReader:
        return PartReader(self.manifest, name)

    def modules(self, only: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Full (unsharded) CPU weights: ``{"policy": sd, "value_head": sd}`` (``only``:
        just that module's, nothing else is read)."""
        reader = self.part("weights")
        out: dict[str, dict[str, torch.Tensor]] = {}
        for key in reader:
            name, _, rest = key.partition(".")
            if only is None or name == only:
                out.setdefault(name, {})[rest] = reader.full(key)
        return out

    def adapter(self) -> tuple[Any, dict[str, torch.Tensor]] | None:
        """The LoRA adapter (peft's ``LoraConfig``, tensors by peft file key), verified
        against the manifest; None for a full fine-tuning checkpoint."""
        from safetensors.torch import load_file

        from weighted_mtp.models import lora

        if lora.WEIGHTS_FILE not in self.manifest.files:
            return None
        config_file = self.manifest.path(lora.CONFIG_FILE)
        weights_file = self.manifest.path(lora.WEIGHTS_FILE)
        try:
            config = lora.read_config(config_file)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{config_file}: not a LoRA adapter config ({exc})") from None
        try:
            return config, load_file(str(weights_file))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{weights_file}: not readable safetensors ({exc})") from None

    def rng(self) -> dict[str, Any]:
        reader = self.part("rng")
        state = decode(self.meta["rng"], reader.full)
        check_rng(self.path / STATE, state)
        return state

    def config_path(self, field: str) -> str | None:
        """A path field of the stored config.

        An absolute path (what training records) is used as stored when it exists. A path
        relative to the checkpoint (``relative_paths`` in state.json, for a storage tree
        moved elsewhere; or a relative value in config.yaml) is followed only when it stays
        inside the checkpoint directory: one that leads outside it (``..``) is a
        CheckpointError naming the field, since a copied checkpoint must not pick files
        around wherever it was put. To use such a file, pass it explicitly (make the
        recorded absolute path exist, e.g. a symlink, or give ``load_policy`` the path)."""
        section, _, leaf = field.rpartition(".")
        node: Any = self.config
        for k in section.split("."):
            node = node.get(k, {}) if isinstance(node, dict) else {}
        value = node.get(leaf) if isinstance(node, dict) else None
        if not value:
            return None
        if not isinstance(value, str):
            raise CheckpointError(
                f"{self.path / CONFIG}: {field} must be a path (a string), got "
                f"{type(value).__name__}"
            )
        if Path(value).is_absolute():
            if Path(value).exists():
                return value
            rel = self.meta.get("relative_paths", {}).get(field)
            if not rel or not (self.path / rel).exists():
                return value  # missing: the caller names it
            where = f"{self.path / STATE}: relative_paths.{field}={rel!r}"
            target = self.path / rel
        else:
            where, target = f"{self.path / CONFIG}: {field}={value!r}", self.path / value
        inside = os.path.normpath(target)
        if not _within(self.path, inside):
            raise CheckpointError(
                f"{where} leads outside the checkpoint directory ({inside}), so it is not "
                f"followed; {field} as recorded ({value}) does not exist. Pass the file "
                "explicitly: put it at the recorded absolute path (a symlink will do)"
                + (" or give load_policy(model_path=...)" if field.startswith("models.") else "")
            )
        return inside


def _within(root: Path, path: str) -> bool:
    """``path`` (normalised) is ``root`` or below it, symlinks resolved."""
    base = os.path.realpath(root)
    return os.path.commonpath([base, os.path.realpath(path)]) == base


def _section(cfg: dict[str, Any], field: str) -> tuple[dict[str, Any] | None, str]:
    """(the dict holding ``field``'s leaf or None, the leaf's name)."""
    section, _, leaf = field.rpartition(".")
    node: Any = cfg
    for k in section.split("."):
        node = node.get(k) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def absolute_paths(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` (a plain config dict) with its PATH_FIELDS made absolute, in place, so a
    checkpoint's config works from any cwd; returns ``cfg``."""
    for field in PATH_FIELDS:
        node, leaf = _section(cfg, field)
        if node is not None and node.get(leaf):
            node[leaf] = str(Path(node[leaf]).absolute())
    return cfg


def relative_paths(cfg: dict[str, Any], ckpt_dir: Path) -> dict[str, str]:
    """PATH_FIELDS of ``cfg`` (absolute already) relative to ``ckpt_dir``."""
    out = {}
    for field in PATH_FIELDS:
        node, leaf = _section(cfg, field)
        if node is not None and node.get(leaf):
            out[field] = os.path.relpath(node[leaf], ckpt_dir)
    return out


def load(path: str | Path, with_modules: bool = True) -> dict[str, Any]:
    """The state of a checkpoint as a dict (``modules``: full CPU weights, ``config``)."""
    ck = Checkpoint(path)
    state = dict(ck.meta) | {"config": ck.config}
    if with_modules:
        state["modules"] = ck.modules()
        adapter = ck.adapter()
        if adapter is not None:  # LoRA: the adapter tensors by peft file key
            state["adapter"] = adapter[1]
    return state


def file_sha256(path: str | Path) -> str:
    """Identity of what a value head was read from: a checkpoint directory's manifest
    digest, or the file's sha256."""
    p = Path(path)
    if p.is_dir() and (p / MANIFEST).is_file():
        return Manifest(p).digest()
    return sha256_file(p)


def load_value_head(path: str | Path) -> ValueHead:
    """The value head of a training checkpoint (critic or verifiable)."""
    p = Path(path)
    if not is_checkpoint(p):
        raise CheckpointError(
            f"{p} is not a training checkpoint: point experiment.critic_checkpoint at a "
            "critic checkpoint (e.g. checkpoint_best)"
        )
    ck = Checkpoint(p)
    if ck.meta.get("value_head_config") is None:
        raise CheckpointError(
            f"{p} is a {ck.stage} checkpoint without a value head: point "
            "experiment.critic_checkpoint at a critic checkpoint (e.g. checkpoint_best)"
        )
    try:
        head = ValueHead(**ck.meta["value_head_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{p / STATE}: field 'value_head_config' is not a value head's config ({exc})"
        ) from None
    sd = ck.modules("value_head").get("value_head", {})
    try:
        head.load_state_dict(sd)
    except RuntimeError as exc:
        raise CheckpointError(f"{p}: value head does not match its config ({exc})") from None
    return head


def load_policy(
    path: str | Path,
    device: str | torch.device = "cpu",
    merge: bool = True,
    model_path: str | Path | None = None,
    tokenizer_path: str | Path | None = None,
):
    """The policy of a training checkpoint, with its tokenizer: (model, tokenizer).

    The base model comes from the checkpoint's ``models.policy`` config; a checkpoint
    that trained the policy (baseline, verifiable, rho1) overrides its weights, or, with
    LoRA, adds its adapters: merged into the base weights (``merge``, a plain
    :class:`MTPTransformer`) or as peft layers. A Meta directory or safetensors checkpoint
    is loaded as it is. ``model_path`` / ``tokenizer_path``: the base model and tokenizer
    given explicitly, instead of the checkpoint's (see :meth:`Checkpoint.config_path`).
    """
    from weighted_mtp.models.formats import check_state_dict, load_model
    from weighted_mtp.models.tokenizer import load_tokenizer, policy_tokenizer_path

    p = Path(path)
    if p.is_dir() and not is_checkpoint(p):
        tok_dir = p / "tokenizer" if (p / "tokenizer").exists() else p
        return load_model(p, device=device), load_tokenizer(tok_dir)
    ck = Checkpoint(p)
    model_path = str(model_path) if model_path else ck.config_path("models.policy.path")
    if not model_path or not Path(model_path).exists():
        raise CheckpointError(
            f"{p}: its base model models.policy.path={model_path!r} does not exist (nor "
            "relative to the checkpoint); put the model there"
        )
    policy = ck.config["models"]["policy"]
    model = load_model(model_path, policy["dtype"], device)
    trained = ck.modules("policy").get("policy")
    if trained is not None:
        check_dtypes(trained, model.state_dict(), ck.path / "weights.safetensors", "policy.")
        check_state_dict(trained, model.args, str(ck.manifest.path("state.json").parent))
        model.load_state_dict(trained)
    adapter = ck.adapter()
    if adapter is not None:
        from weighted_mtp.errors import UserError
        from weighted_mtp.models import lora

        try:
            tuner = lora.attach(model, *adapter)
        except UserError as exc:
            raise CheckpointError(f"{p}: {exc}") from None
        if merge:
            model = tuner.merge_and_unload()
    tok_path = str(tokenizer_path) if tokenizer_path else None
    tok = policy_tokenizer_path(
        model_path, tok_path or ck.config_path("models.policy.tokenizer_path")
    )
    return model, load_tokenizer(tok)
