"""Proof against a peer: our next-token head == transformers' LlamaForCausalLM."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from weighted_mtp import export
from weighted_mtp.errors import UserError
from weighted_mtp.models import hf
from weighted_mtp.models.formats import load_model, model_from_state_dict, save_meta_dir
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer


def _meta_model(n_future: int) -> MTPTransformer:
    args = ModelArgs(
        dim=64,
        n_layers=4 + n_future,
        n_heads=8,
        n_kv_heads=2,
        vocab_size=101,
        multiple_of=32,
        ffn_dim_multiplier=1.3,
        norm_eps=1e-6,
        rope_theta=500.0,
        n_future_tokens=n_future,
    )
    m = MTPTransformer(args)
    m.init_weights(torch.Generator().manual_seed(n_future), std=0.08)
    for name, p in m.named_parameters():  # non-trivial norm weights
        if name.endswith("norm.weight"):
            p.data.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(len(name)))
    return m


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 101, (3, 13), generator=g)
    mask = (torch.arange(13) < torch.tensor([[13], [9], [4]])).long()
    return ids.masked_fill(mask == 0, 0), mask


def test_export_cli_and_logits_equal_llama(tmp_path: Path):
    model = _meta_model(n_future=3)
    save_meta_dir(model, tmp_path / "meta")
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    args = parser.parse_args(
        ["--checkpoint", str(tmp_path / "meta"), "--to", "hf", str(tmp_path / "hf")]
    )
    assert export.run(args) == 0
    hf = LlamaForCausalLM.from_pretrained(
        tmp_path / "hf", local_files_only=True, dtype=torch.float32
    ).eval()
    assert hf.config.num_hidden_layers == 5 and hf.config.num_key_value_heads == 2
    ids, mask = _padded_batch()
    ours = load_model(tmp_path / "meta").eval()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)[:, :, 0]
    valid = mask.bool()
    assert got.shape == want.shape
    torch.testing.assert_close(got[valid], want[valid], atol=1e-4, rtol=0)


def _hf_to_meta(sd: dict[str, torch.Tensor], n_heads: int, n_kv: int) -> dict:
    """Independent inverse conversion (HF rotate-half -> Meta interleaved)."""

    def unpermute(w: torch.Tensor, h: int) -> torch.Tensor:
        rows, dim = w.shape
        return w.view(h, 2, rows // h // 2, dim).transpose(1, 2).reshape(rows, dim)

    names = {v: k for k, v in hf._BLOCK_KEYS.items()}
    out = {
        "tok_embeddings.weight": sd["model.embed_tokens.weight"],
        "norm.weight": sd["model.norm.weight"],
        "output.weight": sd["lm_head.weight"],
    }
    for key, w in sd.items():
        if key.startswith("model.layers."):
            i, rest = key.split(".")[2], ".".join(key.split(".")[3:])
            if rest == "self_attn.q_proj.weight":
                w = unpermute(w, n_heads)
            elif rest == "self_attn.k_proj.weight":
                w = unpermute(w, n_kv)
            out[f"layers.{i}.{names[rest]}"] = w
    return out


def test_n_future_1_equals_plain_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    hf = LlamaForCausalLM(cfg).eval()
    for p in hf.parameters():  # HF inits norms to 1 and small weights: make it non-trivial
        p.data.normal_(0, 0.1) if p.dim() > 1 else p.data.uniform_(0.5, 1.5)
    args = ModelArgs(
        dim=64,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=101,
        multiple_of=16,
        norm_eps=1e-5,
        rope_theta=10000.0,
        n_future_tokens=1,
    )
    assert args.ffn_hidden_dim == 176
    ours = model_from_state_dict(_hf_to_meta(hf.state_dict(), 4, 2), args).eval()
    ids, mask = _padded_batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)
    assert got.shape == (3, 13, 1, 101)
    valid = mask.bool()
    torch.testing.assert_close(got[:, :, 0][valid], want[valid], atol=1e-4, rtol=0)


def test_export_copies_tokenizer_and_rejects_missing_checkpoint(tmp_path: Path):
    tok = tmp_path / "meta" / "tokenizer"
    model = _meta_model(n_future=2)
    save_meta_dir(model, tmp_path / "meta")
    tok.mkdir()
    (tok / "tokenizer.model").write_bytes(b"sp")
    out = export.export_hf(tmp_path / "meta", tmp_path / "hf", dtype="bfloat16")
    assert (out / "tokenizer.model").read_bytes() == b"sp"
    assert (out / "tokenizer_config.json").exists()
    hf = LlamaForCausalLM.from_pretrained(out, local_files_only=True)
    assert hf.lm_head.weight.dtype == torch.bfloat16
    ns = argparse.Namespace(checkpoint=str(tmp_path / "nope"), to="hf", out=str(out), dtype=None)
    with pytest.raises(UserError, match="does not exist"):
        export.run(ns)
