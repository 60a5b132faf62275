"""Greedy decoding speed: plain (head 0, KV cache) vs self-speculative (MTP heads draft).

Batch 1, prompts from the held-out synthetic split (training template), greedy to EOS or
``--max-new-tokens``. Prints tokens/s, the speed-up, the acceptance rate and tokens per
forward for each draft length (0 = all heads run but nothing is proposed), and checks that
every speculative output equals the plain greedy one.

Two models (``--models``):

- ``micro``: the micro policy (3 trunk blocks + 4 head blocks), briefly fine-tuned;
- ``7b-like``: Meta's 7B MTP proportions — 32 blocks of which 28 form the trunk and one
  block per head (n_future_tokens 4) — at micro width, trained from scratch through the
  baseline stage (``--deep-epochs``) so that the extra heads' drafts are meaningful. Its
  heads are 4 of 32 blocks, as in the 7B model, so a speculative forward costs about what
  a greedy one does and the speed-up follows the tokens per forward.

    python benchmarks/decode.py --checkpoint RUN/checkpoints/baseline/checkpoint_final
    python benchmarks/decode.py            # no checkpoint: trains both models briefly first
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="checkpoint directory or Meta dir")
    p.add_argument("--storage", type=Path, default=Path("storage"), help="micro assets root")
    p.add_argument("--prompts", type=int, default=20, help="test problems used as prompts")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed passes (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--train-epochs", type=float, default=1.0, help="micro, without --checkpoint")
    p.add_argument("--deep-epochs", type=float, default=3.0, help="7b-like training epochs")
    p.add_argument("--models", nargs="+", default=["micro", "7b-like"], help="micro, 7b-like")
    p.add_argument("--device", default="cpu")
    return p


# Meta's 7B MTP: 32 blocks, n_future_tokens 4 -> 28 trunk blocks + 4 one-block heads
# (width 64 here, so that CPU training stays short)
DEEP_PARAMS = dict(dim=64, n_layers=32, n_future_tokens=4)


def build_deep_policy(storage: Path, out: Path) -> Path:
    """A fresh 7B-proportioned policy (micro width) in Meta format, micro tokenizer."""
    import shutil

    import torch

    from weighted_mtp.assets import MICRO_MTP_DIR, MICRO_MTP_PARAMS
    from weighted_mtp.models.formats import save_meta_dir
    from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
    from weighted_mtp.models.tokenizer import TOKENIZER_FILE, Tokenizer

    tok_file = storage / MICRO_MTP_DIR / "tokenizer" / TOKENIZER_FILE
    args = ModelArgs(
        **{**MICRO_MTP_PARAMS, **DEEP_PARAMS}, vocab_size=Tokenizer(tok_file).vocab_size
    )
    model = MTPTransformer(args)
    model.init_weights(torch.Generator().manual_seed(0))
    save_meta_dir(model, out)
    (out / "tokenizer").mkdir(exist_ok=True)
    shutil.copy(tok_file, out / "tokenizer" / TOKENIZER_FILE)
    return out


def train_briefly(storage: Path, epochs: float, out: Path, model: Path | None = None) -> str:
    """A short baseline run (of ``model``, default the micro policy); its final checkpoint."""
    from weighted_mtp import app
    from weighted_mtp.config.loader import compose
    from weighted_mtp.setup_assets import setup

    setup(storage)
    data = storage / "datasets" / "synthetic" / "processed"
    model = model or storage / "models" / "micro-mtp"
    cfg = compose(
        [
            "stage=baseline",
            "profile=local",
            f"models.policy.path={model}",
            f"models.policy.tokenizer_path={model / 'tokenizer'}",
            f"models.reference.path={storage / 'models' / 'micro-ref'}",
            f"dataset.train={data / 'train.jsonl'}",
            f"dataset.validation={data / 'valid.jsonl'}",
            "data_sampling.n_samples=1000",
            f"training.n_epochs={epochs}",
            "training.batch_size=8",
            "training.learning_rate=3e-3",
            "training.warmup_ratio=0.05",
            "checkpoint.save_checkpoint_every=0",
            f"checkpoint.save_dir={out}",
            "runtime.device=cpu",
        ]
    )
    app.run(cfg, source="benchmarks/decode.py")
    return str(out / "checkpoint_final")


def _timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, statistics.median(times)


def bench(ckpt: str, args: argparse.Namespace, label: str) -> None:
    """Time plain greedy vs speculative decoding of one policy and print the table."""
    from weighted_mtp.data.collate import encode_prompt
    from weighted_mtp.evaluation.generate import SamplingParams, generate
    from weighted_mtp.evaluation.problems import load_problems
    from weighted_mtp.evaluation.speculative import SpeculativeStats, speculative_generate
    from weighted_mtp.training.checkpoint import load_policy

    model, tok = load_policy(ckpt, args.device)
    test = args.storage / "datasets" / "synthetic" / "processed" / "test.jsonl"
    problems, _ = load_problems(test, args.prompts)
    prompts = [encode_prompt(p.record, tok) for p in problems]
    params = SamplingParams(max_new_tokens=args.max_new_tokens)

    def plain():
        return [generate(model, [p], params, tok.eos_id)[0] for p in prompts]

    def spec(n_draft: int):
        def run():
            total, outs = SpeculativeStats(), []
            for p in prompts:
                out, st = speculative_generate(model, p, args.max_new_tokens, tok.eos_id, n_draft)
                outs.append(out)
                total.add(st)
            return outs, total

        return run

    plain()  # warm-up
    ref, t_plain = _timed(plain, args.repeats)
    n_tok = sum(len(o) for o in ref)
    a = model.args
    blocks = f"{a.n_layers - a.n_future_tokens} trunk + {a.n_future_tokens} head blocks"
    print(f"\n== {label}: {blocks}, dim {a.dim}\ncheckpoint: {ckpt}")
    print(f"{len(prompts)} prompts, {n_tok} greedy tokens, batch 1,")
    print(f"{args.threads} thread(s), median of {args.repeats}\n")
    head = f"{'method':<22}{'tok/s':>9}{'speed-up':>10}{'accept':>9}{'tok/fwd':>9}{'same':>7}"
    print(head)
    print(f"{'greedy (head 0)':<22}{n_tok / t_plain:>9.0f}{1.0:>10.2f}{'-':>9}{1.0:>9.2f}{'-':>7}")
    for n_draft in range(model.n_future_tokens):
        (outs, st), t = _timed(spec(n_draft), args.repeats)
        same = sum(a == b for a, b in zip(outs, ref, strict=True))
        name = f"speculative, {n_draft} draft" + ("s" if n_draft != 1 else "")
        print(
            f"{name:<22}{n_tok / t:>9.0f}{t_plain / t:>10.2f}{st.acceptance_rate:>9.2f}"
            f"{st.tokens_per_forward:>9.2f}{f'{same}/{len(ref)}':>7}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="wmtp-bench-") as tmp:
        t = Path(tmp)
        if args.checkpoint:
            bench(args.checkpoint, args, "given checkpoint")
            return 0
        if "micro" in args.models:
            ckpt = train_briefly(args.storage, args.train_epochs, t / "micro")
            bench(ckpt, args, "micro policy")
        if "7b-like" in args.models:
            from weighted_mtp.setup_assets import setup

            setup(args.storage)
            deep = build_deep_policy(args.storage, t / "deep-init")
            t0 = time.perf_counter()
            ckpt = train_briefly(args.storage, args.deep_epochs, t / "deep", deep)
            print(f"7b-like policy trained in {time.perf_counter() - t0:.0f} s", flush=True)
            bench(ckpt, args, "7B-proportioned policy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
