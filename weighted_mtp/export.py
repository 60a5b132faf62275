"""``python -m weighted_mtp export --checkpoint PATH --to hf OUT``.

PATH: a training checkpoint directory (replicated, fsdp or LoRA), a Meta model directory,
a safetensors checkpoint or a torch.distributed.checkpoint (DCP) directory. The
conversion itself lives in :mod:`weighted_mtp.models.hf`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from weighted_mtp.errors import UserError
from weighted_mtp.models import lora
from weighted_mtp.models.formats import read_checkpoint
from weighted_mtp.models.hf import export_hf_adapter, export_hf_state_dict
from weighted_mtp.models.tokenizer import TOKENIZER_FILE
from weighted_mtp.training.checkpoint import is_checkpoint, load_policy

HELP = "export a policy checkpoint's next-token model to Hugging Face Llama format"


def export_hf(
    checkpoint_or_meta_dir: str | Path,
    out_dir: str | Path,
    dtype: str | torch.dtype | None = None,
    adapter_dir: str | Path | None = None,
) -> Path:
    """Export a Meta directory, a safetensors checkpoint or a training checkpoint
    directory (``checkpoint_final/``, replicated or fsdp); the tokenizer is copied. A
    LoRA checkpoint is exported merged; with ``adapter_dir`` also as base + peft adapter
    (:func:`export_hf_adapter`)."""
    src = Path(checkpoint_or_meta_dir)
    if is_checkpoint(src):  # verified against its manifest; an old .pt is refused
        model, tokenizer = load_policy(src, merge=False)
        tok = Path(tokenizer.path)
        sd = model.state_dict()
        if lora.is_adapted(model):
            base, adapter = lora.split(model)
            if adapter_dir is not None:
                config = model.peft_config[lora.ADAPTER]
                export_hf_adapter(base, adapter, config, model.args, adapter_dir, dtype, tok)
            lora.merge(model)
            sd = lora.split(model)[0]
        elif adapter_dir is not None:
            raise UserError(f"--adapter: {src} holds no LoRA adapter (full fine-tuning)")
        return export_hf_state_dict(sd, model.args, out_dir, dtype, tok)
    if adapter_dir is not None:
        raise UserError(f"--adapter needs a LoRA training checkpoint, not {src}")
    args, sd = read_checkpoint(src)
    base = src if src.is_dir() else src.parent
    tok = next(
        (p for p in (base / TOKENIZER_FILE, base / "tokenizer" / TOKENIZER_FILE) if p.is_file()),
        None,
    )
    return export_hf_state_dict(sd, args, out_dir, dtype, tok)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="training checkpoint directory, Meta model directory, safetensors or DCP directory",
    )
    parser.add_argument("--to", required=True, choices=["hf"], help="target format")
    parser.add_argument("out", metavar="OUT", help="output directory")
    parser.add_argument(
        "--dtype", default=None, help="float32 | bfloat16 | float16 (default: the checkpoint's)"
    )
    parser.add_argument(
        "--adapter",
        default=None,
        metavar="DIR",
        help="LoRA checkpoints: also write DIR/base (the base model) and DIR/adapter (a peft "
        "adapter for it)",
    )


def run(args: argparse.Namespace) -> int:
    src = Path(args.checkpoint)
    if not src.exists():
        raise UserError(f"--checkpoint {src} does not exist")
    out = export_hf(src, args.out, args.dtype, getattr(args, "adapter", None))
    print(f"exported {src} -> {out} (LlamaForCausalLM, next-token head)")
    if getattr(args, "adapter", None):
        print(f"  base + peft adapter -> {args.adapter}/base, {args.adapter}/adapter")
    return 0
