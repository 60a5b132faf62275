"""`python -m weighted_mtp evaluate` end to end, and the scoring path on known programs."""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from weighted_mtp.data.curriculum import DEFAULT_DIFFICULTY_BINS
from weighted_mtp.data.records import Record, read_records
from weighted_mtp.errors import UserError
from weighted_mtp.evaluation import evaluate as ev
from weighted_mtp.evaluation import problems as problems_mod
from weighted_mtp.evaluation.config import DEFAULT_CONTEXT, EvalConfig
from weighted_mtp.evaluation.problems import Problem, score_all
from weighted_mtp.sandbox.limits import Limits

pytestmark = pytest.mark.usefixtures("one_thread")


def _split(root: Path, name: str = "test") -> Path:
    return root / "datasets" / "synthetic" / "processed" / f"{name}.jsonl"


def test_evaluate_cli_on_a_trained_checkpoint(make_cfg, tmp_path: Path, micro_storage: Path):
    from weighted_mtp import app
    from weighted_mtp.__main__ import main

    cfg = make_cfg("baseline", "training.learning_rate=1e-3")
    app.run(cfg)
    ckpt = Path(cfg.checkpoint.save_dir) / "checkpoint_final"
    assert ckpt.is_dir()
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(ckpt), "--data", str(_split(micro_storage))]
    argv += ["--k", "1,2", "--n-samples", "2", "--temperature", "0.8", "--top-p", "0.95"]
    argv += ["--max-new-tokens", "24", "--limit", "4", "--out", str(out), "--seed", "3"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and len({r["problem_id"] for r in rows}) == 4
    for r in rows:
        assert r["n"] == 2 and len(r["samples"]) == 2 and 0 <= r["c"] <= 2
        assert 0.0 <= r["pass@1"] <= r["pass@2"] <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["by_difficulty"]) == {"low", "medium", "high"}
    binned = sum(b["n_problems"] for b in summary["by_difficulty"].values())
    assert binned + summary["unbinned"] == summary["n_problems"] == 4
    assert 0.0 <= summary["pass@1"] <= summary["pass@2"] <= 1.0
    assert summary["tokens_per_s"] > 0 and summary["gen_tokens"] > 0
    # same seed, same samples
    again = tmp_path / "again"
    assert main([*argv[:-3], str(again), "--seed", "3"]) == 0
    assert (again / "results.jsonl").read_text() == (out / "results.jsonl").read_text()


def test_evaluate_rejects_pass_at_k_on_too_few_samples(micro_storage: Path, tmp_path: Path):
    from weighted_mtp.__main__ import main

    policy = micro_storage / "models" / "micro-mtp"
    argv = ["evaluate", "--checkpoint", str(policy), "--data", str(_split(micro_storage))]
    assert main([*argv, "--k", "1,5", "--n-samples", "1", "--out", str(tmp_path)]) == 2
    assert main([*argv, "--n-samples", "3", "--out", str(tmp_path)]) == 2  # greedy x3


def _reference_programs(path: Path) -> dict[str, dict[bool, str]]:
    """problem_id -> {is_correct: first solution of that label}."""
    out: dict[str, dict[bool, str]] = defaultdict(dict)
    for r in read_records(path):
        out[r.problem_id].setdefault(r.is_correct, r.output)
    return out


@pytest.mark.parametrize("correct", [True, False])
def test_scoring_path_runs_reference_solutions(
    micro_storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, correct: bool
):
    """A "perfect" (or always wrong) model: the known solutions go through the same
    sandbox scoring, pass@k and summary as sampled programs."""
    data = _split(micro_storage, "valid")
    refs = _reference_programs(data)
    both = [pid for pid, d in refs.items() if len(d) == 2][:5]
    subset = tmp_path / "subset.jsonl"
    subset.write_text(
        "".join(r.to_json() + "\n" for r in read_records(data) if r.problem_id in both)
    )

    def fake_sample(cfg, problems):
        progs = [[refs[p.problem_id][correct]] * cfg.n_samples for p in problems]
        return progs, {"gen_tokens": 0, "gen_seconds": 0.0, "tokens_per_s": 0.0}

    monkeypatch.setattr(ev, "sample_programs", fake_sample)
    cfg = EvalConfig(
        checkpoint=str(micro_storage / "models" / "micro-mtp"),
        data=str(subset),
        out_dir=str(tmp_path / "out"),
        ks=[1, 2],
        n_samples=2,
        temperature=1.0,
    )
    summary = ev.evaluate(cfg)
    want = 1.0 if correct else 0.0
    assert summary["n_problems"] == 5
    assert summary["pass@1"] == summary["pass@2"] == want
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    for r in rows:
        assert all(s["passed"] is correct for s in r["samples"])
        if not correct:  # a wrong program fails a real test run, with its status recorded
            assert r["samples"][0]["n_passed"] < r["samples"][0]["n_tests"]


def test_humaneval_problem_scored_by_its_check(tmp_path: Path, monkeypatch):
    rec = Record(
        instruction="Complete the function.",
        input="def add(a, b):\n",
        output="    return a + b\n",
        task_id="HumanEval/x",
        is_correct=True,
        metadata={
            "source": "humaneval",
            "difficulty": 0,
            "problem_id": "HumanEval/x",
            "humaneval": {
                "prompt": "def add(a, b):\n",
                "test": "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n",
                "entry_point": "add",
            },
        },
    )
    problem = Problem(rec, "humaneval")
    limits = Limits(timeout_s=5.0)
    checks = score_all([problem], [["    return a + b\n", "    return a - b\n"]], limits, 2)
    assert [c.passed for c in checks[0]] == [True, False]
    row = ev.problem_row(problem, ["a", "b"], checks[0], [1, 2])
    assert row["pass@1"] == 0.5 and row["pass@2"] == 1.0
    assert ev.summarize([row], [1], DEFAULT_DIFFICULTY_BINS)["unbinned"] == 1  # difficulty 0
    # results carried over between evaluations: a program already run is not run again
    scored: dict = {}
    score_all([problem], [["    return a + b\n"]], limits, 2, scored)
    runs = []
    real = problems_mod.score_program
    monkeypatch.setattr(problems_mod, "score_program", lambda *a: runs.append(a[1]) or real(*a))
    again = score_all([problem], [["    return a + b\n", "    return b + a\n"]], limits, 2, scored)
    assert [c.passed for c in again[0]] == [True, True] and runs == ["    return b + a\n"]
    assert sorted(p for _, p in scored) == ["    return a + b\n", "    return b + a\n"]


def test_integer_bins_put_edges_in_their_bin():
    rows = [{"n": 1, "c": int(d % 2 == 0), "difficulty": d} for d in range(1, 12)]
    s = ev.summarize(rows, [1], DEFAULT_DIFFICULTY_BINS)
    counts = {name: b["n_problems"] for name, b in s["by_difficulty"].items()}
    assert counts == {"low": 3, "medium": 4, "high": 4} and s["unbinned"] == 0
    assert s["by_difficulty"]["low"]["pass@1"] == pytest.approx(1 / 3)


def test_hydra_form_logs_to_mlflow(micro_storage: Path, tmp_path: Path):
    """``wmtp-eval`` (the Hydra form): composed from conf/evaluate.yaml, logged to MLflow."""
    import subprocess
    import sys

    store = tmp_path / "mlflow.db"
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("wmtp-eval")),
            f"evaluation.checkpoint={micro_storage / 'models' / 'micro-mtp'}",
            f"evaluation.data={_split(micro_storage)}",
            "evaluation.ks=[1]",
            "evaluation.max_new_tokens=8",
            "evaluation.limit=2",
            f"evaluation.mlflow_uri=sqlite:///{store}",
            "evaluation.mlflow_experiment=eval-test",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pass@1" in out.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mlflow_run_id"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.metrics["eval/pass_at_1"] == summary["pass@1"]
    assert run.data.metrics["eval/n_problems"] == 2
    assert run.data.params["evaluation.n_samples"] == "1"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "summary.json",
        "results.jsonl",
    }


def test_demo_smoke(micro_storage: Path, tmp_path: Path):
    """The demo's whole path on a tiny budget: every row (four stages, two controls, the
    pretrained policy), six evaluations, outputs."""
    from weighted_mtp import demo

    # its own copy: the demo runs setup (which rewrites the splits) on its storage
    storage = shutil.copytree(micro_storage, tmp_path / "storage")
    out = tmp_path / "demo"
    argv = ["--storage", str(storage), "--out", str(out), "--n-samples", "16"]
    argv += ["--epochs", "1", "--critic-epochs", "1", "--batch-size", "4", "--val-samples", "16"]
    argv += ["--evals-per-epoch", "2", "--eval-samples", "2", "--limit", "2"]
    argv += ["--max-new-tokens", "8", "--jobs", "2"]  # two worker processes
    argv += ["--pretrain-problems", "200", "--pretrain-steps", "40", "--reference-steps", "10"]
    assert demo.main(argv) == 0
    md = (out / "results.md").read_text()
    names = ["critic", "verifiable", "verifiable_control", "baseline", "rho1", "rho1_control"]
    names.append("pretrained")
    for stage in names:
        assert f"| {stage} |" in md
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == names
    for r in rows[1:]:
        assert 0.0 <= r["pass@1"] <= r["pass@2"] <= 1.0 and 0.0 <= r["greedy_pass@1"] <= 1.0
    for r in rows[1:-1]:  # trained policies: their loss and weight diagnostics
        assert math.isfinite(r["val/loss"]) and r["tokens_per_s"] > 0
        assert 0.0 <= r["weight_summary"]["weight/incorrect_share"] <= 1.0
    by = {r["stage"]: r for r in rows}
    assert by["verifiable_control"]["weight_summary"]["weight/mean_incorrect"] == 1.0
    assert by["verifiable"]["bug_token_weights"]["n_records"] > 0
    assert by["rho1"]["weight_summary"]["weight/ce_dropped"] > 0
    assert (out / "results.png").stat().st_size > 0
    timing = json.loads((out / "results.json").read_text())["timing"]
    assert timing["cpu_seconds"] > 0 and timing["wall_seconds"] >= timing["setup_seconds"]


def _fake_sampler(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace generation by echoing each problem's first solution; records the calls."""
    calls: list[str] = []

    def fake_sample(cfg, problems):
        calls.append(cfg.isolation)
        return [[p.record.output] * cfg.n_samples for p in problems], {
            "gen_tokens": 0,
            "gen_seconds": 0.0,
            "tokens_per_s": 0.0,
        }

    monkeypatch.setattr(ev, "sample_programs", fake_sample)
    return calls


def test_every_argument_is_checked_before_generation(
    micro_storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from weighted_mtp.__main__ import main

    calls = _fake_sampler(monkeypatch)
    policy = micro_storage / "models" / "micro-mtp"
    base = ["evaluate", "--checkpoint", str(policy), "--data", str(_split(micro_storage))]
    base += ["--out", str(tmp_path / "out"), "--limit", "2"]
    for bad, field in [
        (["--timeout", "0"], "timeout_s"),
        (["--timeout", "nan"], "timeout_s"),
        (["--top-p", "0"], "top_p"),
        (["--temperature", "-1"], "temperature"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--max-prompt-tokens", "0"], "max_prompt_tokens"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "x"], "device"),
        (["--device", "tpu-9000"], "device"),
        (["--bins", '{"low": [5, 1]}'], "difficulty_bins.low"),
        (["--data", str(tmp_path / "missing.jsonl")], "data file not found"),
    ]:
        assert main([*base, *bad]) == 2, bad
        assert field in capsys.readouterr().err, bad
    assert calls == []  # nothing was generated
    with pytest.raises(SystemExit) as exc:  # argparse: not a choice
        main([*base, "--isolation", "jail"])
    assert exc.value.code == 2 and "invalid choice: 'jail'" in capsys.readouterr().err
    with pytest.raises(UserError, match="isolation must be one of bwrap, none"):  # Hydra form
        EvalConfig(
            checkpoint=str(policy), data=str(_split(micro_storage)), isolation="jail"
        ).check()


def test_isolation_unavailable_refuses_unless_opted_out(
    micro_storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from weighted_mtp.__main__ import main
    from weighted_mtp.sandbox import isolation
    from weighted_mtp.sandbox.bwrap import BwrapIsolation

    calls = _fake_sampler(monkeypatch)
    monkeypatch.setitem(isolation._INSTANCES, "bwrap", BwrapIsolation())
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no bwrap here
    policy = micro_storage / "models" / "micro-mtp"
    argv = ["evaluate", "--checkpoint", str(policy), "--data", str(_split(micro_storage))]
    argv += ["--out", str(tmp_path / "out"), "--limit", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "bwrap is not installed" in err and "--isolation none" in err
    assert "Traceback" not in err and calls == []
    assert main([*argv, "--isolation", "none"]) == 0  # explicit opt-out: runs, and warns
    assert "WARNING: isolation=none" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["isolation"] == "none" and summary["pass@1"] == 1.0 and calls == ["none"]


def test_malformed_lines_stop_or_are_skipped_with_a_count(
    micro_storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from weighted_mtp.__main__ import main

    _fake_sampler(monkeypatch)
    lines = _split(micro_storage).read_text().splitlines()[:6]
    data = tmp_path / "broken.jsonl"
    data.write_text("\n".join([*lines[:3], "{not json", *lines[3:]]) + "\n")
    policy = micro_storage / "models" / "micro-mtp"
    argv = ["evaluate", "--checkpoint", str(policy), "--data", str(data)]
    argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{data}:4: malformed record" in err and "--skip-invalid" in err
    assert main([*argv, "--skip-invalid"]) == 0  # the flag the message names exists
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped_invalid_lines"] == 1


def test_prompts_longer_than_the_context_are_skipped_and_counted(
    micro_storage: Path, tmp_path: Path, capsys
):
    from weighted_mtp.__main__ import main

    recs = list(read_records(_split(micro_storage)))
    first = {}
    for r in recs:
        first.setdefault(r.problem_id, r)
    chosen = list(first.values())[:4]
    chosen[1].instruction = "Read the numbers carefully. " * 2000  # far over the context
    chosen[3].instruction = "x" * 5_000_000  # skipped on its length alone, never tokenized
    data = tmp_path / "long.jsonl"
    data.write_text("".join(r.to_json() + "\n" for r in chosen))
    policy = micro_storage / "models" / "micro-mtp"
    argv = ["evaluate", "--checkpoint", str(policy), "--data", str(data)]
    argv += ["--max-new-tokens", "4", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert "skipped 2 problems whose prompt is longer than" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["skipped_long_prompt"] == 2 and summary["n_problems"] == 2
    assert summary["skipped_long_prompt_ids"] == [chosen[1].problem_id, chosen[3].problem_id]
    assert summary["max_prompt_tokens"] == DEFAULT_CONTEXT - 4
    rows = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert [json.loads(r)["problem_id"] for r in rows] == [
        chosen[0].problem_id,
        chosen[2].problem_id,
    ]
    # an explicit budget below every prompt: nothing to generate from is a user error
    assert main([*argv, "--max-prompt-tokens", "3"]) == 2
    assert "--max-prompt-tokens" in capsys.readouterr().err
