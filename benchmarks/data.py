"""Indexed sampling vs the naive "json-load every line, then sample" approach.

Builds a processed jsonl of ``--lines`` records (~1.5 KB each, ~100 solutions per
problem like CodeContests) in a temp dir, then, each approach in a fresh subprocess,
draws ``--samples`` balanced records with the default verifiable curriculum, reads them
and tokenizes them. Prints seconds per phase and peak RSS, and the ratios.

    python benchmarks/data.py                 # 1M lines (takes a few minutes)
    python benchmarks/data.py --lines 200000  # smaller
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEDULE = [
    {"epoch_range": [0.0, 0.3], "difficulty_weights": {"low": 0.7, "medium": 0.3, "high": 0.0}},
    {"epoch_range": [0.3, 0.7], "difficulty_weights": {"low": 0.3, "medium": 0.6, "high": 0.1}},
    {"epoch_range": [0.7, 1.0], "difficulty_weights": {"low": 0.1, "medium": 0.5, "high": 0.4}},
]
BINS = {"low": [1, 3], "medium": [4, 7], "high": [8, 11]}
WORDS = [
    "read",
    "the",
    "integer",
    "array",
    "n",
    "and",
    "print",
    "sum",
    "of",
    "its",
    "elements",
    "for",
    "each",
    "test",
    "case",
    "output",
    "minimum",
    "maximum",
    "number",
    "line",
    "contains",
    "query",
    "string",
    "value",
    "between",
    "first",
    "second",
]
CODE = ["n = int(input())", "a = list(map(int, input().split()))", "s = 0", "for x in a:",
        "    s += x", "print(s)", "if n % 2 == 0:", "    print('YES')", "else:",
        "    print('NO')", "b = sorted(a)", "ans = max(a) - min(a)"]  # fmt: skip


def build_file(path: Path, lines: int) -> None:
    from weighted_mtp.data.index import JsonlWriter
    from weighted_mtp.data.records import Record

    rng = random.Random(0)
    statements = [" ".join(rng.choice(WORDS) for _ in range(150)) for _ in range(500)]
    programs = ["\n".join(rng.choice(CODE) for _ in range(25)) for _ in range(2000)]
    with JsonlWriter(path) as w:
        for i in range(lines):
            pid = i // 100
            w.write(
                Record(
                    instruction=f"Problem {pid}. {statements[pid % 500]}",
                    input=f"Example 1\nInput:\n{pid}\nOutput:\n{pid * 2}",
                    output=f"# solution {i}\n{programs[rng.randrange(2000)]}",
                    task_id=f"p{pid}/{i}",
                    is_correct=rng.random() < 0.4,
                    metadata={
                        "source": "bench",
                        "difficulty": pid % 11 + 1,
                        "problem_id": f"p{pid}",
                        "cf_rating": 1200,
                    },  # fmt: skip
                )
            )


def train_tokenizer(jsonl: Path, out: Path) -> Path:
    import sentencepiece as spm

    with open(jsonl, encoding="utf-8") as src, open(out / "corpus.txt", "w") as dst:
        for _, line in zip(range(3000), src, strict=False):
            r = json.loads(line)
            dst.write(r["instruction"] + "\n" + r["output"] + "\n")
    spm.SentencePieceTrainer.train(
        input=str(out / "corpus.txt"), model_prefix=str(out / "sp"), vocab_size=800,
        model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    return out / "sp.model"


class SpTokenizer:
    def __init__(self, path: str) -> None:
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=path)
        self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), -1

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return [self.bos_id] * bos + self.sp.encode(text) + [self.eos_id] * eos


def worker(kind: str, file: str, tok_path: str, samples: int) -> dict:
    from weighted_mtp.data.collate import Collator

    collator = Collator(SpTokenizer(tok_path), max_length=2048)
    t0 = time.perf_counter()
    if kind == "indexed":
        from weighted_mtp.data.dataset import ProcessedDataset
        from weighted_mtp.data.sampling import RecordSampler

        ds = ProcessedDataset(file)
        sampler = RecordSampler(
            n_samples=samples, correct_ratio=0.5, balance_correct=True, seed=1,
            curriculum_learning=True, difficulty_bins=BINS, curriculum_schedule=SCHEDULE,
            index=ds.index, n_epochs=1.0,
        )  # fmt: skip
        ids = list(sampler)
        t1 = time.perf_counter()
        records = [ds[i] for i in ids]
    else:
        from weighted_mtp.data.index import Index
        from weighted_mtp.data.records import validate_record
        from weighted_mtp.data.sampling import RecordSampler

        with open(file, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        # the same exact plan (counts per segment and cell), drawn from in-memory lists
        cells: dict[tuple[str, bool], list[int]] = {}
        for i, r in enumerate(rows):
            d = r["metadata"]["difficulty"]
            b = next((n for n, (lo, hi) in BINS.items() if lo <= d <= hi), None)
            cells.setdefault((b, r["is_correct"]), []).append(i)
        plan = RecordSampler(
            n_samples=samples, correct_ratio=0.5, balance_correct=True, seed=1,
            curriculum_learning=True, difficulty_bins=BINS, curriculum_schedule=SCHEDULE,
            index=Index.for_jsonl(file), n_epochs=1.0,
        )  # fmt: skip
        rng, picked = random.Random(1), []
        for seg in plan.segments:
            for (b, kind_), k in zip(plan.cell_names, seg.counts, strict=True):
                pool = cells.get((b, kind_ == "correct"), [])
                picked += rng.sample(pool, int(k))
        rng.shuffle(picked)
        t1 = time.perf_counter()
        records = [validate_record(rows[i]) for i in picked]
    t2 = time.perf_counter()
    n_tokens = sum(len(collator.encode(r).ids) for r in records)
    t3 = time.perf_counter()
    return {
        "sample_s": t1 - t0, "read_s": t2 - t1, "tokenize_s": t3 - t2, "total_s": t3 - t0,
        "records": len(records), "tokens": n_tokens,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--tokenizer", help="SentencePiece .model (default: train a small one)")
    ap.add_argument("--worker", choices=["indexed", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.file, args.tokenizer, args.samples)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        t = time.perf_counter()
        build_file(path, args.lines)
        size = path.stat().st_size
        print(f"built {args.lines} lines, {size / 1e9:.2f} GB ({size / args.lines:.0f} B/line) "
              f"in {time.perf_counter() - t:.0f}s")  # fmt: skip
        tok = args.tokenizer or str(train_tokenizer(path, Path(tmp)))
        res = {}
        for kind in ("indexed", "naive"):
            cmd = [sys.executable, __file__, "--worker", kind, "--file", str(path),
                   "--tokenizer", tok, "--samples", str(args.samples)]  # fmt: skip
            res[kind] = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                                  text=True).stdout)  # fmt: skip
    keys = ["sample_s", "read_s", "tokenize_s", "total_s", "peak_rss_mb"]
    print(f"{'':10}" + "".join(f"{k:>14}" for k in keys))
    for kind, r in res.items():
        print(f"{kind:10}" + "".join(f"{r[k]:14.2f}" for k in keys))
    i, n = res["indexed"], res["naive"]
    assert i["records"] == n["records"] == args.samples
    data_i, data_n = i["sample_s"] + i["read_s"], n["sample_s"] + n["read_s"]
    print(f"sample+read: naive/indexed = {data_n / data_i:.1f}x faster (target >= 10x)")
    print(f"end to end incl. tokenization: {n['total_s'] / i['total_s']:.2f}x faster")
    print(f"peak memory: indexed/naive = {i['peak_rss_mb'] / n['peak_rss_mb']:.3f} "
          "(target <= 0.2)")  # fmt: skip


if __name__ == "__main__":
    main()
