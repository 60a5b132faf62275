"""Micro assets for laptops and CI: a code tokenizer, a micro MTP policy, a micro reference.

``build_micro_assets(storage_root, corpus_files)`` writes

- ``models/micro-mtp``: Meta format (params.json + consolidated.pth), n_future_tokens 4,
  dim 128, 3 trunk blocks + next-token head + 3 extra heads, 4 heads / 2 kv heads, with the
  tokenizer at ``micro-mtp/tokenizer/tokenizer.model``;
- ``models/micro-ref``: Hugging Face Llama format (config.json + model.safetensors +
  tokenizer.model + tokenizer_config.json), 4 blocks, same tokenizer.

The tokenizer is a Llama-style SentencePiece BPE (unk 0, bos 1, eos 2, no pad, byte
fallback, identity normalisation, whitespace kept) trained on the corpus, so code
round-trips through encode/decode exactly. The policy gets a deterministic pretraining
(``pretrain_steps``) so fine-tuning starts from a model that knows the task distribution
(``setup`` gives it correct solutions of synthetic problems in no split); the reference is
that model's next-token part fine-tuned on high-quality data (``reference_steps``), as
Rho-1's reference is its base model fine-tuned. Idempotent: complete assets built with the
same settings are left alone; everything is built in a temporary directory and renamed
into place. Deterministic for a given corpus, seed and torch build (one intra-op thread;
in one process or data parallel over two, the same bits).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from random import Random
from typing import Any

import torch
import torch.distributed as dist

from weighted_mtp.data.collate import Encoded, encode_record
from weighted_mtp.models.formats import save_meta_dir
from weighted_mtp.models.hf import export_hf_state_dict
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.models.tokenizer import TOKENIZER_FILE, Tokenizer
from weighted_mtp.training.losses import IGNORE_INDEX, backward_trunk, mtp_loss, mtp_targets

MICRO_MTP_DIR = "models/micro-mtp"
MICRO_REF_DIR = "models/micro-ref"
MICRO_VOCAB_SIZE = 1024
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
PRETRAIN_BATCH = 16  # sequences per pretraining step
PRETRAIN_LR = 3e-3  # peak AdamW learning rate of the pretraining
PRETRAIN_SHARDS = 2  # a pretraining step's batch in shards: one per rank with jobs > 1
REFERENCE_LR = 1e-3  # peak learning rate of the reference's fine-tuning
ASSETS_RECIPE = 6  # raised when what setup builds changes: older storages get rebuilt


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
    pkg = Path(__file__).resolve().parent
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


def text_sequences(docs: list[str], tok: Tokenizer, seq: int = 64) -> list[Encoded]:
    """The documents' tokens (BOS text EOS, concatenated) cut into windows of ``seq``; the
    loss covers every token."""
    stream = [i for d in docs for i in tok.encode(d, bos=True, eos=True)]
    return [Encoded(stream[i : i + seq], 0, False) for i in range(0, len(stream) - 1, seq)]


def record_sequences(records: list[Any], tok: Tokenizer, max_length: int = 512) -> list[Encoded]:
    """Records in the training template; the loss covers their responses, as in training."""
    return [encode_record(r, tok, max_length) for r in records]


def _padded(seqs: list[Encoded], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ids [B, S], labels (-100 on prompt and padding) and the attention mask
    (which lets the blocks skip the padding, see ``AttnContext.rows``)."""
    width = max(len(e.ids) for e in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, e in enumerate(seqs):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        labels[i, e.prompt_len : len(e.ids)] = ids[i, e.prompt_len : len(e.ids)]
        mask[i, : len(e.ids)] = True
    return ids, labels, mask


def _valid_targets(e: Encoded, n: int) -> int:
    """MTP targets of one sequence that carry a label (response tokens, per head)."""
    return sum(max(0, len(e.ids) - max(e.prompt_len, k + 1)) for k in range(n))


def _shard_gradient(model: MTPTransformer, seqs: list[Encoded], pad_id: int, denom: int):
    """Flat gradient of these sequences' share of the step loss (``denom``: the step's
    labelled targets), with the share itself appended; leaves no gradient behind."""
    ids, labels, mask = _padded(seqs, pad_id)
    h = model.trunk(ids, mask)
    out = mtp_loss(model, h, mask, mtp_targets(labels, model.n_future_tokens), denominator=denom)
    backward_trunk(h, out)
    flat = [p.grad.reshape(-1) for p in model.parameters()] + [out.loss.detach().reshape(1)]
    model.zero_grad(set_to_none=True)
    return torch.cat(flat)


def pretrain(
    model: MTPTransformer,
    seqs: list[Encoded],
    steps: int,
    seed: int,
    pad_id: int = 0,
    batch: int = PRETRAIN_BATCH,
    lr: float = PRETRAIN_LR,
) -> list[float]:
    """``steps`` AdamW steps of the MTP loss on ``seqs``; returns the losses.

    Each pass visits the sequences in a fresh seeded order, ``batch`` at a time; linear
    warm-up over 20 steps, then linear decay to 0. A step's batch is cut into
    ``PRETRAIN_SHARDS`` shards whose gradients are summed: in turn in one process, or one
    shard per rank when a process group of ``PRETRAIN_SHARDS`` ranks is initialised (data
    parallel, gloo). Both give the same bits: each shard's gradient is computed alike and
    the sum of two is the same in either order.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world not in (1, PRETRAIN_SHARDS):
        raise ValueError(f"pretraining runs on 1 or {PRETRAIN_SHARDS} ranks, not {world}")
    mine = range(PRETRAIN_SHARDS) if world == 1 else [dist.get_rank()]
    rng = Random(seed)
    order = list(range(len(seqs)))
    queue: list[list[int]] = []
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20) * (1 - step / steps)
        if not queue:
            rng.shuffle(order)
            queue = [order[i : i + batch] for i in range(0, len(order), batch)][::-1]
        chosen = [seqs[i] for i in queue.pop()]
        denom = max(1, sum(_valid_targets(e, model.n_future_tokens) for e in chosen))
        shards = [chosen[j::PRETRAIN_SHARDS] for j in range(PRETRAIN_SHARDS)]
        flat = None
        for j in mine:
            part = _shard_gradient(model, shards[j], pad_id, denom)
            flat = part if flat is None else flat + part
        if world > 1:
            dist.all_reduce(flat)
        for p, g in zip(params, flat[:-1].split([p.numel() for p in params]), strict=True):
            p.grad = g.view_as(p)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(flat[-1]))
    return losses


def pretrained_state(
    params: dict[str, Any],
    vocab_size: int,
    seed: int,
    seqs: list[Encoded],
    steps: int,
    pad_id: int,
    lr: float = PRETRAIN_LR,
    init: dict[str, torch.Tensor] | None = None,
    jobs: int = 1,
) -> dict[str, torch.Tensor]:
    """A new model (init from ``seed``, or the weights ``init``) after :func:`pretrain`, in
    this process, or (``jobs`` > 1) data parallel over ``PRETRAIN_SHARDS`` worker
    processes: the same weights, bit for bit. One intra-op thread, so the weights do not
    depend on the machine's core count or on where they were trained."""
    args = (params, vocab_size, seed, seqs, steps, pad_id, lr, init)
    if jobs > 1 and steps > 0:
        ctx = multiprocessing.get_context("spawn")
        with (
            tempfile.TemporaryDirectory(prefix="wmtp-pretrain-") as tmp,
            ProcessPoolExecutor(PRETRAIN_SHARDS, mp_context=ctx) as pool,
        ):
            store = str(Path(tmp) / "store")
            ranks = [pool.submit(_pretrained_rank, r, store, *args) for r in range(PRETRAIN_SHARDS)]
            return [f.result() for f in ranks][0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = _new_model(params, vocab_size, seed)
            if init is not None:
                model.load_state_dict(init)
            if steps > 0:
                pretrain(model, seqs, steps, seed, pad_id, lr=lr)
        return model.state_dict()
    finally:
        torch.set_num_threads(threads)


def _pretrained_rank(rank: int, store: str, *args: Any) -> dict | None:
    """:func:`pretrained_state` as one rank of a gloo group (a worker process); rank 0
    returns the weights."""
    dist.init_process_group(
        "gloo", store=dist.FileStore(store, PRETRAIN_SHARDS), rank=rank,
        world_size=PRETRAIN_SHARDS,
    )  # fmt: skip
    try:
        state = pretrained_state(*args)
    finally:
        dist.destroy_process_group()
    return state if rank == 0 else None


def _new_model(params: dict[str, Any], vocab_size: int, seed: int) -> MTPTransformer:
    model = MTPTransformer(ModelArgs(**params, vocab_size=vocab_size))
    model.init_weights(torch.Generator().manual_seed(seed))
    return model


def assets_complete(storage_root: str | Path, build: dict[str, Any] | None = None) -> bool:
    """Every file present, built by this recipe (older assets are rebuilt) and, when
    ``build`` is given, with these settings."""
    root = Path(storage_root)
    path = root / MICRO_MTP_DIR / "assets.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    if info.get("recipe") != ASSETS_RECIPE or (build is not None and info.get("build") != build):
        return False
    return all((root / MICRO_MTP_DIR / f).is_file() for f in MTP_FILES) and all(
        (root / MICRO_REF_DIR / f).is_file() for f in REF_FILES
    )


def build_micro_assets(
    storage_root: Path,
    corpus_files: list[Path],
    seed: int = 0,
    pretrain_steps: int = 40,
    pretrain_records: list[Any] | None = None,
    jobs: int = 1,
    build: dict[str, Any] | None = None,
    reference_records: list[Any] | None = None,
    reference_steps: int = 0,
) -> None:
    """Build the micro tokenizer, policy and reference under ``storage_root/models``.

    ``pretrain_records`` (correct solutions of the task distribution, disjoint from the
    training data): the policy pretrains on them in the training template with the
    training's loss (on the response), as the paper's policy has seen code of the task.
    Without them, it pretrains on the text of ``corpus_files``. The reference is built as
    Rho-1 builds its own: the same base model (the policy's next-token part: embeddings,
    trunk, head 0, norm and output, which is a Llama of ``MICRO_REF_PARAMS``' shape)
    fine-tuned for ``reference_steps`` on high-quality data, ``reference_records``
    (``setup``: the training split's correct solutions). ``jobs`` > 1 trains data parallel
    over two worker processes (the same weights as ``jobs=1``). ``build``: the caller's
    settings, recorded in ``assets.json``; assets built with other settings are rebuilt.
    """
    root = Path(storage_root)
    if assets_complete(root, build):
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
        seqs = record_sequences(pretrain_records, tok) if pretrain_records else None
        seqs = seqs or text_sequences(docs, tok)
        ref_seqs = record_sequences(reference_records, tok) if reference_records else seqs
        vocab, pad = tok.vocab_size, tok.pad_id
        policy = _new_model(MICRO_MTP_PARAMS, vocab, seed)
        policy.load_state_dict(
            pretrained_state(MICRO_MTP_PARAMS, vocab, seed, seqs, pretrain_steps, pad, jobs=jobs)
        )
        base = {k: v for k, v in policy.state_dict().items() if not k.startswith("extra_heads.")}
        ref = _new_model(MICRO_REF_PARAMS, vocab, seed)
        ref.load_state_dict(
            pretrained_state(
                MICRO_REF_PARAMS,
                vocab,
                seed,
                ref_seqs,
                reference_steps,
                pad,
                lr=REFERENCE_LR,
                init=base,
                jobs=jobs,
            )  # fmt: skip
        )
        save_meta_dir(policy, mtp_dir)
        export_hf_state_dict(ref.state_dict(), ref.args, ref_dir, tokenizer_file=tok_file)
        info = {
            "recipe": ASSETS_RECIPE,
            "build": build or {},
            "seed": seed,
            "vocab_size": vocab,
            "pretrain_steps": pretrain_steps,
            "reference_steps": reference_steps,
            "corpus_files": len(corpus_files),
            "corpus_documents": len(docs),
            "pretrain_records": len(pretrain_records or []),
            "pretrain_sequences": len(seqs),
            "reference_sequences": len(ref_seqs),
        }
        (mtp_dir / "assets.json").write_text(json.dumps(info, indent=2) + "\n")
        for src, rel in ((mtp_dir, MICRO_MTP_DIR), (ref_dir, MICRO_REF_DIR)):
            dst = root / rel
            if dst.exists():
                shutil.rmtree(dst)  # incomplete leftovers of an interrupted build
            os.replace(src, dst)
