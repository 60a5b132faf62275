"""The next-token model (trunk + ``layers[-1]``) as a transformers LlamaForCausalLM.

Pure conversions of a Meta-layout state dict + ``ModelArgs`` (and of a LoRA adapter) to
Hugging Face's layout and files; the ``export`` command (``weighted_mtp.export``) reads
checkpoints and calls them.

Meta applies RoPE to interleaved pairs, HF Llama to split halves, so wq / wk are permuted
per head: ``w.view(h, hd // 2, 2, dim).transpose(1, 2).reshape(h * hd, dim)``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from weighted_mtp.models import lora
from weighted_mtp.models.formats import (
    check_state_dict,
    resolve_dtype,
    write_safetensors,
)
from weighted_mtp.models.mtp import ModelArgs
from weighted_mtp.models.tokenizer import TOKENIZER_FILE

_BLOCK_KEYS = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


# LoRA target modules: Meta name -> LlamaForCausalLM name
_HF_MODULES = {
    "wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj",
    "w1": "gate_proj", "w3": "up_proj", "w2": "down_proj", "output": "lm_head",
}  # fmt: skip


def permute_rope(w: Tensor, n_heads: int) -> Tensor:
    """Meta (interleaved pairs) -> HF (rotate-half) row order of a q/k projection."""
    rows, dim = w.shape
    hd = rows // n_heads
    return w.view(n_heads, hd // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def hf_state_dict(sd: Mapping[str, Tensor], args: ModelArgs) -> dict[str, Tensor]:
    """Meta MTP keys -> LlamaForCausalLM keys (trunk + next-token head; extra heads dropped)."""
    n_kv = int(args.n_kv_heads or args.n_heads)
    out = {
        "model.embed_tokens.weight": sd["tok_embeddings.weight"],
        "model.norm.weight": sd["norm.weight"],
        "lm_head.weight": sd["output.weight"],
    }
    for i in range(args.n_layers - args.n_future_tokens + 1):
        for src, dst in _BLOCK_KEYS.items():
            w = sd[f"layers.{i}.{src}"]
            if src == "attention.wq.weight":
                w = permute_rope(w, args.n_heads)
            elif src == "attention.wk.weight":
                w = permute_rope(w, n_kv)
            out[f"model.layers.{i}.{dst}"] = w
    return out


def hf_config(args: ModelArgs, dtype: torch.dtype, max_position_embeddings: int = 4096) -> dict:
    """config.json of the equivalent LlamaForCausalLM (readable by transformers 4.x and 5.x)."""
    dt = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers - args.n_future_tokens + 1,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": int(args.n_kv_heads or args.n_heads),
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "max_position_embeddings": int(args.extra.get("max_seq_len", max_position_embeddings)),
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": dt,
        "torch_dtype": dt,
    }


def write_hf_tokenizer(tokenizer_file: Path, out_dir: Path) -> None:
    """Copy a Llama SentencePiece model with a LlamaTokenizer config beside it."""
    shutil.copyfile(tokenizer_file, out_dir / TOKENIZER_FILE)
    cfg: dict[str, Any] = {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
    }  # fmt: skip
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def export_hf_state_dict(
    sd: Mapping[str, Tensor],
    args: ModelArgs,
    out_dir: str | Path,
    dtype: str | torch.dtype | None = None,
    tokenizer_file: Path | None = None,
) -> Path:
    """Write config.json + model.safetensors (+ tokenizer) of the next-token model."""
    check_state_dict(sd, args, "export source")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dt = resolve_dtype(dtype) if dtype is not None else sd["output.weight"].dtype
    tensors = {k: v.detach().to(dt).contiguous() for k, v in hf_state_dict(sd, args).items()}
    write_safetensors(tensors, out / "model.safetensors", {"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(args, dt), indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n"
    )
    if tokenizer_file is not None:
        write_hf_tokenizer(tokenizer_file, out)
    return out


def hf_adapter_state_dict(adapter: Mapping[str, Tensor], args: ModelArgs) -> dict[str, Tensor]:
    """peft adapter tensors of the MTP model (peft file keys) -> those of the exported
    LlamaForCausalLM: block and ``output`` names mapped like the weights, ``lora_B`` of
    wq / wk row-permuted like wq / wk (``lora_A`` acts on the input side: unchanged).
    Adapters of ``extra_heads`` are dropped with the heads (HF Llama has none)."""
    n_kv = int(args.n_kv_heads or args.n_heads)
    out = {}
    for key, t in adapter.items():
        name = key.removeprefix(lora.PEFT_PREFIX)  # e.g. layers.3.attention.wq.lora_B.weight
        module, _, tail = name.partition(".lora_")
        if module == "output":
            out[f"{lora.PEFT_PREFIX}lm_head.lora_{tail}"] = t
        elif module.startswith("layers."):
            _, i, sub = module.split(".", 2)
            if tail.startswith("B") and sub in ("attention.wq", "attention.wk"):
                t = permute_rope(t, args.n_heads if sub == "attention.wq" else n_kv)
            hf = _BLOCK_KEYS[f"{sub}.weight"].removesuffix(".weight")
            out[f"{lora.PEFT_PREFIX}model.layers.{i}.{hf}.lora_{tail}"] = t
    return out


def export_hf_adapter(
    base: Mapping[str, Tensor],
    adapter: Mapping[str, Tensor],
    config: Any,
    args: ModelArgs,
    out_dir: str | Path,
    dtype: str | torch.dtype | None = None,
    tokenizer_file: Path | None = None,
) -> Path:
    """``OUT/base`` (the un-adapted LlamaForCausalLM) + ``OUT/adapter`` (a peft adapter
    directory for it: ``PeftModel.from_pretrained(base_model, OUT/adapter)``)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    base_dir = export_hf_state_dict(base, args, out / "base", dtype, tokenizer_file)
    hf_config = lora.lora_config(
        config.r,
        config.lora_alpha,
        config.lora_dropout,
        sorted({_HF_MODULES[t] for t in config.target_modules}),
        str(base_dir.resolve()),
        task_type="CAUSAL_LM",
    )
    (out / "adapter").mkdir(parents=True, exist_ok=True)
    hf_config.save_pretrained(str(out / "adapter"))
    tensors = hf_adapter_state_dict(adapter, args)
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "adapter" / lora.WEIGHTS_FILE), metadata={"format": "pt"})
    return out
