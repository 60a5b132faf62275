"""A trained policy leaves the framework: export a training checkpoint to HF Llama and
check transformers reproduces our next-token head."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from weighted_mtp import app, export
from weighted_mtp.training.checkpoint import load_policy


def test_export_a_training_checkpoint(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("baseline", "training.learning_rate=1e-3", "data_sampling.n_samples=4")
    app.run(cfg)
    ckpt = Path(cfg.checkpoint.save_dir) / "checkpoint_final"
    out = tmp_path / "hf"
    args = argparse.Namespace(checkpoint=str(ckpt), to="hf", out=str(out), dtype=None)
    assert export.run(args) == 0
    ours, tok = load_policy(ckpt)
    hf = LlamaForCausalLM.from_pretrained(out, local_files_only=True).eval()
    ids = torch.tensor([tok.encode("def solve(n):\n    return n * 2\n", bos=True)])
    with torch.no_grad():
        expected = ours(ids)[:, :, 0]  # head 0: next-token logits
        got = hf(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert (out / "tokenizer.model").is_file()
