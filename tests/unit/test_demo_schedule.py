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
    # 6 trainings (4 stages, 2 controls) + 6 evaluations (5 trained policies, pretrained)
    assert len(done) == len(set(done)) == 2 * (6 + 6)
    for seed, run in ((3, tmp_path / "a"), (4, tmp_path / "b")):
        i = done.index
        assert i((seed, "train", "critic")) < i((seed, "train", "verifiable"))
        assert i((seed, "train", "critic")) < i((seed, "train", "verifiable_control"))
        for stage in demo.POLICY_STAGES:
            if stage == demo.PRETRAINED:
                assert (seed, "train", stage) not in done
                pretrained = str(Path("storage") / "models" / "micro-mtp")
                assert (seed, "eval", stage, pretrained) in calls  # the policy stages start from
            else:
                assert i((seed, "train", stage)) < i((seed, "eval", stage))
                assert (seed, "eval", stage, f"{run}/{stage}") in calls  # its own checkpoint
            assert rows[seed][stage]["greedy_pass@1"] == 0.5
        assert "greedy_pass@1" not in rows[seed]["critic"]


def test_rows_bring_in_what_they_need() -> None:
    assert demo.selected_rows(["verifiable_control"]) == ["critic", "verifiable_control"]
    assert demo.selected_rows(["pretrained", "rho1"]) == ["rho1", "pretrained"]


def test_a_control_row_is_its_stage_with_the_controls_weighting(tmp_path: Path) -> None:
    args = demo.parse_args(["--override", "training.policy_records=correct"])
    ctrl = demo.stage_overrides(args, "verifiable_control", tmp_path)
    stage = demo.stage_overrides(args, "verifiable", tmp_path)
    assert set(ctrl) - set(stage) == {
        "weighting=verifiable_control",
        "experiment.name=demo-verifiable_control",
        f"checkpoint.save_dir={tmp_path / 'checkpoints' / 'verifiable_control'}",
    }
    assert "training.policy_records=correct" in ctrl  # --override: every policy stage
    assert "training.policy_records=correct" not in demo.stage_overrides(args, "critic", tmp_path)
