"""Frozen Rho-1 reference model (Hugging Face format) and its per-token CE.

``load_reference`` loads with ``AutoModelForCausalLM.from_pretrained(local_files_only=True)``
(nothing is downloaded), freezes it, and checks that its vocabulary agrees with the policy
tokenizer: same size, and the reference's own tokenizer (``tokenizer.model``, else any
transformers tokenizer in the directory) gives the same ids for probe strings.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weighted_mtp.errors import UserError
from weighted_mtp.models.formats import resolve_dtype
from weighted_mtp.models.tokenizer import Tokenizer, find_tokenizer_file

PROBES = (
    "def solve(n):\n    return sum(range(n))\n",
    "import sys\nfor line in sys.stdin:\n\tprint(line.strip()[::-1])",
    "Given an array of N integers, print the maximum. 12345 -7 0x1F",
)


def _reference_ids(path: Path, text: str) -> list[int] | None:
    """Ids of ``text`` under the reference's own tokenizer, or None if it ships none."""
    try:
        return Tokenizer(find_tokenizer_file(path)).encode(text)
    except UserError:
        pass
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return list(tok.encode(text, add_special_tokens=False))


def check_vocab(path: Path, vocab_size: int, tokenizer: Tokenizer) -> None:
    """Raise UserError if the reference and the policy tokenizer disagree."""
    if vocab_size != tokenizer.vocab_size:
        raise UserError(
            f"reference {path} has vocab_size {vocab_size} but the policy tokenizer "
            f"{tokenizer.path} has {tokenizer.vocab_size}: Rho-1 compares per-token "
            "losses, so both must share one vocabulary (choose a matching "
            "models.reference.path)"
        )
    for text in PROBES:
        ref = _reference_ids(path, text)
        if ref is None:
            return
        ours = tokenizer.encode(text)
        if ref != ours:
            raise UserError(
                f"reference {path} tokenizes {text[:30]!r} as {ref[:8]}... but the "
                f"policy tokenizer {tokenizer.path} gives {ours[:8]}...: the two "
                "vocabularies differ; use a reference trained with the same tokenizer"
            )


def load_reference(
    path: str | Path,
    dtype: str | torch.dtype,
    tokenizer: Tokenizer,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Frozen (eval, requires_grad False) HF causal LM in ``dtype``, vocabulary checked."""
    from transformers import AutoModelForCausalLM

    p = Path(path)
    if not (p / "config.json").is_file():
        raise UserError(
            f"reference model {p} has no config.json: models.reference.path must be "
            "a Hugging Face model directory"
        )
    model = AutoModelForCausalLM.from_pretrained(
        p, local_files_only=True, dtype=resolve_dtype(dtype)
    )
    check_vocab(p, int(model.get_output_embeddings().weight.shape[0]), tokenizer)
    model.requires_grad_(False)
    return model.eval().to(device)


@torch.no_grad()
def reference_token_ce(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token next-token CE [B,S] fp32 of the reference, aligned with head 1's targets.

    ``temperature`` divides the logits first (CE of softmax(logits / T)); Rho-1 uses it.
    The reference runs in its own dtype (``models.reference.dtype``), outside any autocast
    of the caller (the training's mixed precision does not reach it); logits and CE in fp32.

    Position t scores token labels[t+1] (= ``mtp_targets(labels, n)[..., 0]``); positions
    whose target is -100 (prompt, padding, the last one) are 0. The vocabulary projection
    runs in chunks of ``chunk_size`` valid tokens.
    """
    with torch.autocast(input_ids.device.type, enabled=False):
        return _token_ce(model, input_ids, attention_mask, labels, chunk_size, temperature)


def _token_ce(model, input_ids, attention_mask, labels, chunk_size, temperature) -> Tensor:
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    head = model.get_output_embeddings()
    b, s = labels.shape
    target = torch.full_like(labels, -100)
    target[:, :-1] = labels[:, 1:]
    target = target.reshape(-1)
    flat = hidden.reshape(b * s, -1)
    out = torch.zeros(b * s, device=hidden.device)
    for c in (target != -100).nonzero().squeeze(1).split(chunk_size):
        logits = head(flat[c]).float() / temperature
        out[c] = F.cross_entropy(logits, target[c], reduction="none")
    return out.view(b, s)
