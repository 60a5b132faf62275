"""``deepmind/code_contests`` parquet shards -> processed ``train/valid/test.jsonl``.

Streams each shard in small pyarrow batches (only the needed columns; the huge
``generated_tests`` column is never read), so memory stays bounded. Per problem:

- kept: Python 3 and Python 2 solutions (``metadata.language``, ``metadata.python2``),
  correct and incorrect; C++, Java and unknown languages are dropped;
- instruction = description; input = the first ``n_examples`` public tests as examples;
- duplicates (same text after stripping trailing whitespace) are dropped: a repeat with
  the same label is a ``duplicate``, an incorrect copy of a correct solution a
  ``label_conflict``;
- with a tokenizer and ``max_length``, records longer than ``max_length`` tokens (the
  collate template, BOS and EOS included) are dropped as ``too_long``;
- ``metadata.tests``: the public tests; in valid/test also the private tests; in train
  only the public tests, i.e. the statement's examples (enough for the labels, which come
  from the dataset, not from running them). Capped to what a reader accepts: at most
  ``records.MAX_TESTS_PER_RECORD`` tests and :data:`TESTS_BUDGET` bytes of them (the
  first ones kept; such problems are counted as ``capped_tests``); a record still over
  ``records.MAX_RECORD_BYTES`` is dropped as ``too_large``;
- a problem whose ``name`` was already converted in this split is dropped as
  ``duplicate_problem`` (task ids, ``name/kind/j``, must be unique in a file);
- ``metadata.difficulty``: the curriculum's 1..11 scale (:func:`curriculum_difficulty`),
  so every record lands in one of the default ``data_sampling.difficulty_bins``;
  ``metadata.cc_difficulty`` keeps CodeContests' raw value.

Counts per reason are returned and printed per split.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from weighted_mtp.data.collate import Tokenizer, format_prompt
from weighted_mtp.data.index import JsonlWriter
from weighted_mtp.data.records import (
    MAX_RECORD_BYTES,
    MAX_TESTS_PER_RECORD,
    Record,
    RecordTooLarge,
    format_examples,
)
from weighted_mtp.errors import UserError
from weighted_mtp.progress import Progress

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
LANGUAGES = {0: "unknown", 1: "python2", 2: "cpp", 3: "python3", 4: "java"}
PLATFORMS = {
    0: "unknown",
    1: "codechef",
    2: "codeforces",
    3: "hackerearth",
    4: "codejam",
    5: "unknown",
    6: "atcoder",
    7: "aizu",
}
# The curriculum's difficulty scale is 1..11 (easy..hardest); data_sampling.difficulty_bins
# default to low 1-3, medium 4-7, high 8-11. CodeContests' raw ``difficulty`` is an enum:
# 0 unknown, 1-5 EASY/MEDIUM/HARD/HARDER/HARDEST (CodeChef, AtCoder, ... labels),
# 6 EXTERNAL, 7-29 the Codeforces problem letter A..V. ``curriculum_difficulty`` maps it.
CURRICULUM_SCALE = (1, 11)
LABELED_LEVEL = {1: 2, 2: 5, 3: 8, 4: 10, 5: 11}  # EASY .. HARDEST
LETTER_LEVEL = (2, 3, 5, 7, 8, 9, 10)  # Codeforces A..G; H..V (14-29) -> 11
UNKNOWN_LEVEL = 5  # 0 unknown, 6 external: the middle of the scale (medium bin)
CF_RATING_MIN, CF_RATING_STEP = 800, 270  # 800 -> 1, 3500 -> 11


def curriculum_difficulty(difficulty: int, cf_rating: int = 0) -> int:
    """CodeContests' difficulty (and Codeforces rating) on the curriculum's 1..11 scale.

    A Codeforces rating, when present, decides: 1 + round((rating - 800) / 270), clipped
    to 1..11. Otherwise EASY 2, MEDIUM 5, HARD 8, HARDER 10, HARDEST 11; Codeforces letters
    A 2, B 3, C 5, D 7, E 8, F 9, G 10, H-V 11; unknown (0) and external (6) 5.
    """
    lo, hi = CURRICULUM_SCALE
    if cf_rating > 0:
        return min(hi, max(lo, 1 + round((cf_rating - CF_RATING_MIN) / CF_RATING_STEP)))
    if difficulty in LABELED_LEVEL:
        return LABELED_LEVEL[difficulty]
    if 7 <= difficulty <= 29:
        return LETTER_LEVEL[difficulty - 7] if difficulty - 7 < len(LETTER_LEVEL) else hi
    return UNKNOWN_LEVEL


COLUMNS = [
    "name",
    "description",
    "public_tests",
    "source",
    "difficulty",
    "solutions",
    "incorrect_solutions",
    "cf_rating",
    "cf_tags",
]


def find_shards(raw_dir: str | Path) -> dict[str, list[Path]]:
    """Parquet shards per split, by file-name prefix (``train-00000-of-00039.parquet``)."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise UserError(
            f"--raw {raw}: not a directory. Point it at the downloaded "
            "deepmind/code_contests folder (with its *.parquet shards)."
        )
    shards: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for f in sorted(raw.rglob("*.parquet")):
        split = f.name.split("-", 1)[0].split(".", 1)[0]
        if split in shards:
            shards[split].append(f)
        else:
            log.warning("%s: not a train/valid/test shard name; ignored", f)
    if not any(shards.values()):
        raise UserError(f"--raw {raw}: no train-*/valid-*/test-*.parquet shards found")
    return shards


# bytes of JSON that one record's ``metadata.tests`` may take: half the record cap, the
# rest left for the statement, the examples and the solution
TESTS_BUDGET = MAX_RECORD_BYTES // 2


def cap_tests(tests: list[dict[str, str]]) -> list[dict[str, str]]:
    """The longest prefix of ``tests`` with at most ``MAX_TESTS_PER_RECORD`` tests and
    :data:`TESTS_BUDGET` bytes of JSON (UTF-8)."""
    kept, size = [], 2
    for t in tests[:MAX_TESTS_PER_RECORD]:
        size += len(json.dumps(t, ensure_ascii=False).encode("utf-8")) + 2
        if size > TESTS_BUDGET:
            break
        kept.append(t)
    return kept


def _normalize(code: str) -> str:
    return "\n".join(line.rstrip() for line in code.strip().splitlines())


def _tests(t: dict[str, Any] | None) -> list[dict[str, str]]:
    if not t:
        return []
    return [{"input": i, "output": o} for i, o in zip(t["input"], t["output"], strict=False)]


class _Converter:
    def __init__(
        self, split: str, tokenizer: Tokenizer | None, max_length: int | None, n_examples: int
    ) -> None:
        self.split, self.tokenizer, self.max_length = split, tokenizer, max_length
        self.n_examples = n_examples
        self.counts: Counter[str] = Counter()
        self.names: set[str] = set()

    def problem(self, row: dict[str, Any]) -> Iterator[Record]:
        self.counts["problems"] += 1
        if row["name"] in self.names:
            self.counts["dropped_duplicate_problem"] += 1
            return
        self.names.add(row["name"])
        public = _tests(row["public_tests"])
        every = public + (_tests(row.get("private_tests")) if self.split != "train" else [])
        tests = cap_tests(every)
        if len(tests) < len(every):
            self.counts["capped_tests"] += 1
        instruction = (row["description"] or "").strip()
        example_text = format_examples(public[: self.n_examples])
        prompt_len = None
        if self.tokenizer is not None:
            prompt_len = 2 + len(self.tokenizer.encode(format_prompt(instruction, example_text)))
        meta = {
            "source": "codecontests",
            "origin": PLATFORMS.get(row["source"] or 0, "unknown"),
            "difficulty": curriculum_difficulty(
                int(row["difficulty"] or 0), int(row["cf_rating"] or 0)
            ),
            "cc_difficulty": int(row["difficulty"] or 0),  # the raw enum, kept
            "problem_id": row["name"],
            "cf_rating": int(row["cf_rating"] or 0),
            "cf_tags": list(row["cf_tags"] or []),
            "split": self.split,
            "tests": tests,
        }
        seen: dict[str, bool] = {}
        for label, key in ((True, "solutions"), (False, "incorrect_solutions")):
            sols = row[key] or {"language": [], "solution": []}
            for j, (lang, code) in enumerate(zip(sols["language"], sols["solution"], strict=False)):
                language = LANGUAGES.get(lang, "unknown")
                if language not in ("python3", "python2"):
                    self.counts[f"dropped_language_{language}"] += 1
                    continue
                if not instruction or not code.strip():
                    self.counts["dropped_empty"] += 1
                    continue
                norm = _normalize(code)
                if norm in seen:
                    reason = "duplicate" if seen[norm] == label else "label_conflict"
                    self.counts[f"dropped_{reason}"] += 1
                    continue
                seen[norm] = label
                if prompt_len is not None and self.max_length is not None:
                    n_tokens = prompt_len + len(self.tokenizer.encode(code))
                    if n_tokens > self.max_length:
                        self.counts["dropped_too_long"] += 1
                        continue
                kind = "correct" if label else "incorrect"
                self.counts[f"written_{kind}"] += 1
                yield Record(
                    instruction=instruction,
                    input=example_text,
                    output=code,
                    task_id=f"{row['name']}/{kind}/{j}",
                    is_correct=label,
                    metadata={**meta, "language": language, "python2": language == "python2"},
                )


def convert_split(
    shards: list[Path],
    out_path: Path,
    split: str,
    tokenizer: Tokenizer | None = None,
    max_length: int | None = None,
    n_examples: int = 2,
    progress: bool = True,
    batch_size: int = 8,
) -> Counter[str]:
    """Convert one split's shards into ``out_path`` (+ index); return the counts."""
    conv = _Converter(split, tokenizer, max_length, n_examples)
    columns = COLUMNS + (["private_tests"] if split != "train" else [])
    files = [pq.ParquetFile(f) for f in shards]
    total = sum(f.metadata.num_rows for f in files)
    with (
        JsonlWriter(out_path) as writer,
        Progress(total, f"codecontests {split}", "problems", enabled=progress) as bar,
    ):
        for f in files:
            for batch in f.iter_batches(batch_size=batch_size, columns=columns):
                for row in batch.to_pylist():
                    for rec in conv.problem(row):
                        try:
                            writer.write(rec)
                        except RecordTooLarge:
                            kind = "correct" if rec.is_correct else "incorrect"
                            conv.counts[f"written_{kind}"] -= 1
                            conv.counts["dropped_too_large"] += 1
                bar.update(batch.num_rows)
    return conv.counts


def prepare_codecontests(
    raw_dir: str | Path,
    out_dir: str | Path,
    max_length: int | None = None,
    tokenizer: Tokenizer | None = None,
    n_examples: int = 2,
    progress: bool = True,
) -> dict[str, Counter[str]]:
    """Convert every split found under ``raw_dir``; return counts per split."""
    if (max_length is None) != (tokenizer is None):
        raise UserError(
            "--max-length and --tokenizer go together: the length is counted in "
            "tokens of that tokenizer; give both or neither"
        )
    out = Path(out_dir)
    stats = {}
    for split, shards in find_shards(raw_dir).items():
        if shards:
            stats[split] = convert_split(
                shards, out / f"{split}.jsonl", split, tokenizer, max_length, n_examples, progress
            )
    return stats


def format_counts(stats: dict[str, Counter[str]]) -> str:
    """One line per split: problems, written records, dropped per reason."""
    lines = []
    for split, c in stats.items():
        parts = [f"{k}={v}" for k, v in sorted(c.items())]
        lines.append(f"{split}: " + " ".join(parts))
    return "\n".join(lines)
