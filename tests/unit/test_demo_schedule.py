"""The demo's scheduler: every stage of every seed trained and evaluated, in an order that
respects what each task needs (verifiable after the critic, evaluations after training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from weighted_mtp import demo


def test_schedule_runs_each_task_once_after_what_it_needs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    calls: list[tuple[int, str, str, str]] = []

    def fake_task(args, kind, stage, run_dir, seed, ckpt):
        calls.append((seed, kind, stage, ckpt))
        if kind == "train":
            return {"checkpoint": f"{run_dir}/{stage}", "history": [], "train/loss": 1.0}
        return {"greedy_pass@1": 0.5}

    monkeypatch.setattr(demo, "_task", fake_task)
    args = demo.parse_args(["--jobs", "1", "--seeds", "3", "4"])
    rows = demo.schedule(args, {3: tmp_path / "a", 4: tmp_path / "b"})
    done = [(s, k, st) for s, k, st, _ in calls]
    assert len(done) == len(set(done)) == 2 * (4 + 3)  # 4 trainings + 3 evaluations a seed
    for seed, run in ((3, tmp_path / "a"), (4, tmp_path / "b")):
        i = done.index
        assert i((seed, "train", "critic")) < i((seed, "train", "verifiable"))
        for stage in demo.POLICY_STAGES:
            assert i((seed, "train", stage)) < i((seed, "eval", stage))
            assert (seed, "eval", stage, f"{run}/{stage}") in calls  # its own checkpoint
            assert rows[seed][stage]["greedy_pass@1"] == 0.5
        assert "greedy_pass@1" not in rows[seed]["critic"]
