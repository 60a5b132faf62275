"""The synthetic verifiable task set: small stdin/stdout problems with verified labels.

``write_synthetic(out_dir, n_records, seed)`` writes ``train/valid/test.jsonl`` (+ index)
with ``n_records`` records in all, split 10:1:1 by problem (no problem is in two splits).
Each problem (a family from ``synthetic_tasks*`` plus parameters) yields 1-2 correct
programs and up to 3 incorrect ones: family-specific bugs plus single-site mutations of a
correct program (off-by-one, wrong operator / comparison / function, wrong output format).
Every label is checked by running the program on all of the problem's tests in the
sandbox (bubblewrap unless ``isolation="none"``, see ``data.verify``): a correct
program must pass all (else the generator is broken: error), an incorrect candidate must
fail at least one (candidates that pass everything are dropped).
Records carry the tests in ``metadata.tests``; an incorrect record also carries its bug
kind (``metadata.bug``) and where it is (``metadata.bug_offset``, :func:`bug_offset`):
the offset in ``output`` of the first character where the program departs from the
closest correct program of its problem (the longest common prefix over the problem's
solutions; ``len(output)`` when the program is a prefix of a solution). The statements
say the input format themselves, so no worked examples are shown (``input`` is empty,
``N_EXAMPLES``): short sequences keep micro-model training cheap on a CPU. Deterministic
for a seed.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from random import Random

from weighted_mtp.data.index import JsonlWriter
from weighted_mtp.data.records import Record, format_examples
from weighted_mtp.data.synthetic_tasks import Problem
from weighted_mtp.data.synthetic_tasks_lists import FAMILIES
from weighted_mtp.data.verify import passes, run_programs
from weighted_mtp.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("storage/datasets/synthetic/processed")
SPLITS = {"train": 10, "valid": 1, "test": 1}
MAX_INCORRECT = 3
N_EXAMPLES = 0  # tests shown in the prompt (format_examples); the statement suffices

# (bug kind, pattern, replacement, only on `if` lines)
MUTATIONS: list[tuple[str, str, str, bool]] = [
    ("wrong_operator", r" \+ ", " - ", False),
    ("wrong_operator", r" - ", " + ", False),
    ("wrong_operator", r" \* ", " + ", False),
    ("wrong_operator", r" % ", " // ", False),
    ("wrong_comparison", r" > ", " >= ", True),
    ("wrong_comparison", r" >= ", " > ", True),
    ("wrong_comparison", r" < ", " <= ", True),
    ("wrong_comparison", r" <= ", " < ", True),
    ("wrong_comparison", r" == ", " != ", True),
    ("wrong_function", r"\bmax\(", "min(", False),
    ("wrong_function", r"\bmin\(", "max(", False),
    ("off_by_one", r"range\(1, n \+ 1\)", "range(1, n)", False),
    ("off_by_one", r"range\(1, n\)", "range(2, n)", False),
    ("off_by_one", r"range\(n\)", "range(n - 1)", False),
    ("off_by_one", r"range\(i \+ 1, n\)", "range(i, n)", False),
    ("off_by_one", r"print\(b \+ 1\)", "print(b)", False),
    ("off_by_one", r"\[1\]", "[0]", False),
    ("off_by_one", r"\[-2\]", "[-1]", False),
    ("wrong_format", r'" "\.join', '",".join', False),
    ("wrong_format", r'print\(" "\.join\(map\(str, (\w+)\)\)\)', r"print(\1)", False),
    ("wrong_format", r'"YES"', '"Yes"', False),
    ("wrong_format", r'"NONE"', '"None"', False),
    ("wrong_format", r"print\((\w+) ([+*-]) (\d+)\)", r'print("Answer:", \1 \2 \3)', False),
]


def mutants(source: str) -> list[tuple[str, str]]:
    """All single-site mutations of ``source`` as ``(bug kind, program)``, compilable only."""
    out: dict[str, str] = {}
    lines = source.split("\n")
    for kind, pattern, repl, if_only in MUTATIONS:
        for ln, line in enumerate(lines):
            if if_only and not (line.lstrip().startswith("if ") or " if " in line):
                continue
            for m in re.finditer(pattern, line):
                new = line[: m.start()] + m.expand(repl) + line[m.end() :]
                prog = "\n".join([*lines[:ln], new, *lines[ln + 1 :]])
                try:
                    compile(prog, "<mutant>", "exec")
                except SyntaxError:
                    continue
                out.setdefault(prog, kind)
    return [(kind, prog) for prog, kind in out.items()]


def bug_offset(program: str, solutions: list[str]) -> int:
    """Where ``program`` departs from the closest of ``solutions``: the length of its
    longest common prefix with any of them (so ``program[:offset]`` starts some solution,
    and ``program[offset]`` differs from, or runs past the end of, every solution that
    shares that prefix; ``len(program)`` when the program is a prefix of a solution)."""
    best = 0
    for sol in solutions:
        n = min(len(program), len(sol))
        i = next((j for j in range(n) if program[j] != sol[j]), n)
        best = max(best, i)
    return best


def _make_problems(rng: Random, n: int, seen: set[str]) -> list[Problem]:
    """``n`` new distinct problems, cycling over families in a seeded order."""
    families, problems = list(FAMILIES), []
    while len(problems) < n and families:
        rng.shuffle(families)
        for fam in list(families):
            for _ in range(30):
                p = fam(rng)
                if p.problem_id not in seen:
                    seen.add(p.problem_id)
                    problems.append(p)
                    break
            else:
                families.remove(fam)  # parameter space exhausted
            if len(problems) == n:
                break
    return problems


def _candidates(p: Problem, rng: Random) -> list[tuple[str, str]]:
    """Up to MAX_INCORRECT + 2 buggy programs: family bugs first, then one mutant per
    bug kind in turn (kinds and mutants in seeded order), so no kind dominates."""
    by_kind: dict[str, list[str]] = {}
    seen = set(p.solutions)
    for kind, prog in mutants(p.solutions[0]):
        if prog not in seen and prog not in {b for _, b in p.bugs}:
            seen.add(prog)
            by_kind.setdefault(kind, []).append(prog)
    kinds = sorted(by_kind)
    rng.shuffle(kinds)
    for k in kinds:
        rng.shuffle(by_kind[k])
    cands = [(prog, kind) for kind, prog in p.bugs if prog not in set(p.solutions)]
    while any(by_kind.values()):
        cands += [(by_kind[k].pop(), k) for k in kinds if by_kind[k]]
    return cands[: MAX_INCORRECT + 2]


def _records(problems: list[Problem], rng: Random, isolation: str) -> list[list[Record]]:
    """Build and verify the records of each problem (one parallel verification run)."""
    plans = []
    for p in problems:
        plans.append((p, _candidates(p, rng)))
    jobs = [
        (prog, p.inputs) for p, cands in plans for prog in [*p.solutions, *(c for c, _ in cands)]
    ]
    results = iter(run_programs(jobs, isolation=isolation))
    out = []
    for p, cands in plans:
        expected = [p.solve(t) for t in p.inputs]
        tests = [{"input": i, "output": o + "\n"} for i, o in zip(p.inputs, expected, strict=True)]
        meta = {
            "source": "synthetic",
            "difficulty": p.difficulty,
            "problem_id": p.problem_id,
            "family": p.family,
            "tests": tests,
        }
        base = {"instruction": p.statement, "input": format_examples(tests[:N_EXAMPLES])}
        recs = []
        for i, sol in enumerate(p.solutions):
            ok = passes(next(results), expected)
            if not all(ok):
                raise RuntimeError(f"synthetic generator bug: {p.problem_id} solution {i} fails")
            recs.append(
                Record(
                    **base,
                    output=sol,
                    task_id=f"{p.problem_id}/correct/{i}",
                    is_correct=True,
                    metadata=dict(meta),
                )
            )
        n_bad = 0
        for prog, kind in cands:
            ok = passes(next(results), expected)
            if all(ok) or n_bad == MAX_INCORRECT:
                continue
            recs.append(
                Record(
                    **base,
                    output=prog,
                    task_id=f"{p.problem_id}/incorrect/{n_bad}",
                    is_correct=False,
                    metadata={**meta, "bug": kind, "bug_offset": bug_offset(prog, p.solutions)},
                )
            )
            n_bad += 1
        out.append(recs)
    return out


def split_targets(n_records: int) -> dict[str, int]:
    """Records per split (10:1:1, largest remainder)."""
    total_w = sum(SPLITS.values())
    counts = {s: n_records * w // total_w for s, w in SPLITS.items()}
    rest = n_records - sum(counts.values())
    for s in list(SPLITS)[:rest]:
        counts[s] += 1
    return counts


def generate(n_records: int, seed: int = 0, isolation: str = "bwrap") -> dict[str, list[Record]]:
    """The records of each split; deterministic for ``(n_records, seed)``. ``isolation``:
    how label verification runs the programs (``bwrap`` or ``none``)."""
    if n_records < len(SPLITS):
        raise UserError(f"--n-records {n_records}: need at least {len(SPLITS)} records")
    targets = split_targets(n_records)
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    rng, seen = Random(seed), set()
    while any(len(splits[s]) < t for s, t in targets.items()):
        missing = sum(t - len(splits[s]) for s, t in targets.items())
        problems = _make_problems(rng, max(8, missing // 3), seen)
        if not problems:
            raise UserError(
                f"--n-records {n_records} is more than the synthetic families can make "
                f"({sum(map(len, splits.values()))} records); ask for fewer"
            )
        for recs in _records(problems, rng, isolation):
            open_splits = [s for s, t in targets.items() if len(splits[s]) < t]
            if not open_splits:
                break
            split = max(open_splits, key=lambda s: (targets[s] - len(splits[s])) / targets[s])
            splits[split].extend(recs[: targets[split] - len(splits[split])])
    for name, recs in splits.items():
        for r in recs:
            r.metadata["split"] = name
    return splits


def pretrain_corpus(n_problems: int, seed: int, exclude: set[str]) -> list[Record]:
    """Correct solutions of ``n_problems`` new problems (none in ``exclude``): the micro
    models' pretraining corpus, drawn from the task distribution but disjoint from every
    split. The programs are the families' reference solutions (the ones whose tests pass
    by construction and are verified for every split above); they are not executed again."""
    rng = Random(seed + 10_000)
    out = []
    for p in _make_problems(rng, n_problems, set(exclude)):
        tests = [{"input": i, "output": p.solve(i) + "\n"} for i in p.inputs]
        for i, sol in enumerate(p.solutions):
            out.append(
                Record(
                    instruction=p.statement,
                    input=format_examples(tests[:N_EXAMPLES]),
                    output=sol,
                    task_id=f"{p.problem_id}/pretrain/{i}",
                    is_correct=True,
                    metadata={
                        "source": "synthetic",
                        "difficulty": p.difficulty,
                        "problem_id": p.problem_id,
                        "family": p.family,
                        "tests": tests,
                        "split": "pretrain",
                    },
                )
            )
    return out


def write_synthetic(
    out_dir: Path, n_records: int = 3600, seed: int = 0, isolation: str = "bwrap"
) -> dict[str, Path]:
    """Generate the task set into ``out_dir`` (train/valid/test.jsonl + indexes)."""
    out_dir = Path(out_dir)
    paths = {}
    for name, recs in generate(n_records, seed, isolation).items():
        paths[name] = out_dir / f"{name}.jsonl"
        with JsonlWriter(paths[name]) as w:
            for r in recs:
                w.write(r)
    return paths
