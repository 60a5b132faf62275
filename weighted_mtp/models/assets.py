"""Micro assets for laptops and CI: a code tokenizer, a micro MTP policy, a micro reference.

``build_micro_assets(storage_root, corpus_files)`` writes

- ``models/micro-mtp``: Meta format (params.json + consolidated.pth), n_future_tokens 4,
  dim 128, 3 trunk blocks + next-token head + 3 extra heads, 4 heads / 2 kv heads, with the
  tokenizer at ``micro-mtp/tokenizer/tokenizer.model``;
- ``models/micro-ref``: Hugging Face Llama format (config.json + model.safetensors +
  tokenizer.model + tokenizer_config.json), 4 blocks, same tokenizer.

The tokenizer is a Llama-style SentencePiece BPE (unk 0, bos 1, eos 2, no pad, byte
fallback, identity normalisation, whitespace kept) trained on the corpus, so code
round-trips through encode/decode exactly. Both models get a short deterministic
pretraining on the corpus (``pretrain_steps``) so fine-tuning starts from a model that
has seen code. Idempotent: complete assets are left alone; everything is built in a
temporary directory and renamed into place. Deterministic for a given corpus, seed and
torch build / thread count.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from weighted_mtp.models.export import export_hf_state_dict
from weighted_mtp.models.formats import save_meta_dir
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.models.tokenizer import TOKENIZER_FILE, Tokenizer
from weighted_mtp.training.losses import backward_trunk, mtp_loss, mtp_targets

MICRO_MTP_DIR = "models/micro-mtp"
MICRO_REF_DIR = "models/micro-ref"
MICRO_VOCAB_SIZE = 4096
MICRO_MTP_PARAMS: dict[str, Any] = dict(
    dim=128,
    n_layers=7,
    n_heads=4,
    n_kv_heads=2,
    multiple_of=32,
    norm_eps=1e-5,
    rope_theta=10000.0,
    n_future_tokens=4,
)
MICRO_REF_PARAMS: dict[str, Any] = {**MICRO_MTP_PARAMS, "n_layers": 4, "n_future_tokens": 1}
MTP_FILES = ("params.json", "consolidated.pth", f"tokenizer/{TOKENIZER_FILE}")
REF_FILES = ("config.json", "model.safetensors", TOKENIZER_FILE, "tokenizer_config.json")
MAX_CORPUS_CHARS = 4_000_000
PRETRAIN_SEQ = 128  # tokens per window when pretraining on task records
ASSETS_RECIPE = 2  # raised when what setup builds changes: older storages get rebuilt


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def default_corpus_files() -> list[Path]:
    """The project's own Python source and docs (used when no corpus is given)."""
    pkg = Path(__file__).resolve().parents[1]
    files = sorted(pkg.rglob("*.py"))
    repo = pkg.parent
    files += sorted(p for p in [repo / "README.md", *(repo / "docs").rglob("*.md")] if p.is_file())
    return files


def corpus_documents(files: list[Path], max_chars: int = MAX_CORPUS_CHARS) -> list[str]:
    """Text documents: every string field of .jsonl records, whole text of other files."""
    docs: list[str] = []
    total = 0
    for f in files:
        if f.suffix == ".jsonl":
            with f.open(encoding="utf-8") as fh:
                new = [s for line in fh if line.strip() for s in _strings(json.loads(line))]
        else:
            new = [f.read_text(encoding="utf-8", errors="replace")]
        for d in new:
            if d.strip() and total < max_chars:
                docs.append(d)
                total += len(d)
    return docs


def train_tokenizer(docs: list[str], out_file: Path, vocab_size: int = MICRO_VOCAB_SIZE) -> None:
    """Train a Llama-style SentencePiece BPE on ``docs`` (each line is a sentence).

    Fed from memory and written through a buffer, so no path ends up in the model proto
    (same corpus -> same bytes).
    """
    import sentencepiece as spm

    lines = [line for d in docs for line in d.splitlines() if line.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe",
        vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=0.9999,
        shuffle_input_sentence=False, max_sentence_length=16384, num_threads=1,
        minloglevel=2,
    )  # fmt: skip
    out_file.write_bytes(buf.getvalue())


def pretrain(
    model: MTPTransformer,
    tokens: torch.Tensor,
    steps: int,
    seed: int,
    batch: int = 8,
    seq: int = 64,
    lr: float = 3e-3,
) -> list[float]:
    """A few AdamW steps of plain MTP on random windows of ``tokens``; returns the losses."""
    gen = torch.Generator().manual_seed(seed)
    seq = min(seq, len(tokens) - 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:  # linear warm-up then linear decay
            g["lr"] = lr * min(1.0, (step + 1) / 10) * (1 - step / max(steps, 1))
        starts = torch.randint(0, len(tokens) - seq, (batch,), generator=gen)
        ids = torch.stack([tokens[s : s + seq] for s in starts.tolist()])
        h = model.trunk(ids)
        out = mtp_loss(model, h, None, mtp_targets(ids, model.n_future_tokens))
        backward_trunk(h, out)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    return losses


def _new_model(params: dict[str, Any], vocab_size: int, seed: int) -> MTPTransformer:
    model = MTPTransformer(ModelArgs(**params, vocab_size=vocab_size))
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


def assets_complete(storage_root: str | Path) -> bool:
    """Every file present, built by this recipe (older assets are rebuilt)."""
    root = Path(storage_root)
    info = root / MICRO_MTP_DIR / "assets.json"
    if not info.is_file() or json.loads(info.read_text()).get("recipe") != ASSETS_RECIPE:
        return False
    return all((root / MICRO_MTP_DIR / f).is_file() for f in MTP_FILES) and all(
        (root / MICRO_REF_DIR / f).is_file() for f in REF_FILES
    )


def task_stream(records: list[Any], tok: Tokenizer) -> torch.Tensor:
    """Records in the training template (BOS prompt response EOS), concatenated."""
    from weighted_mtp.data.collate import format_prompt

    ids: list[int] = []
    for r in records:
        ids += tok.encode(format_prompt(r.instruction, r.input) + r.output, bos=True, eos=True)
    return torch.tensor(ids, dtype=torch.long)


def build_micro_assets(
    storage_root: Path,
    corpus_files: list[Path],
    seed: int = 0,
    pretrain_steps: int = 40,
    pretrain_records: list[Any] | None = None,
) -> None:
    """Build the micro tokenizer, policy and reference under ``storage_root/models``.

    ``pretrain_records`` (correct solutions of the task distribution, disjoint from the
    training data): both models pretrain on them in the training template, windows of
    ``PRETRAIN_SEQ`` tokens — the policy as the paper's policy has seen code of the task,
    the Rho-1 reference as a model trained on high-quality correct solutions. Without
    them, both pretrain on the text of ``corpus_files``.
    """
    root = Path(storage_root)
    if assets_complete(root):
        return
    (root / "models").mkdir(parents=True, exist_ok=True)
    docs = corpus_documents(list(corpus_files) or default_corpus_files())
    if pretrain_records:
        docs += [r.instruction + "\n" + r.input + "\n" + r.output for r in pretrain_records]
    with tempfile.TemporaryDirectory(dir=root / "models", prefix=".micro-build-") as tmp:
        t = Path(tmp)
        mtp_dir, ref_dir = t / "micro-mtp", t / "micro-ref"
        (mtp_dir / "tokenizer").mkdir(parents=True)
        tok_file = mtp_dir / "tokenizer" / TOKENIZER_FILE
        train_tokenizer(docs, tok_file)
        tok = Tokenizer(tok_file)
        seq = 64
        if pretrain_records:
            tokens, seq = task_stream(pretrain_records, tok), PRETRAIN_SEQ
        else:
            stream = [i for d in docs for i in tok.encode(d, bos=True, eos=True)]
            tokens = torch.tensor(stream, dtype=torch.long)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            policy = _new_model(MICRO_MTP_PARAMS, tok.vocab_size, seed)
            ref = _new_model(MICRO_REF_PARAMS, tok.vocab_size, seed + 1)
            if pretrain_steps > 0:
                pretrain(policy, tokens, pretrain_steps, seed, seq=seq)
                pretrain(ref, tokens, pretrain_steps, seed + 1, seq=seq)
        save_meta_dir(policy, mtp_dir)
        export_hf_state_dict(ref.state_dict(), ref.args, ref_dir, tokenizer_file=tok_file)
        info = {
            "recipe": ASSETS_RECIPE,
            "seed": seed,
            "vocab_size": tok.vocab_size,
            "pretrain_steps": pretrain_steps,
            "corpus_files": len(corpus_files),
            "corpus_documents": len(docs),
            "pretrain_records": len(pretrain_records or []),
        }
        (mtp_dir / "assets.json").write_text(json.dumps(info, indent=2) + "\n")
        for src, rel in ((mtp_dir, MICRO_MTP_DIR), (ref_dir, MICRO_REF_DIR)):
            dst = root / rel
            if dst.exists():
                shutil.rmtree(dst)  # incomplete leftovers of an interrupted build
            os.replace(src, dst)
