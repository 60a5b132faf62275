"""Checkpoints load no code, are verified against their manifest, and resume only into
the data plan and schedule they were written with."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from weighted_mtp import app
from weighted_mtp.__main__ import main
from weighted_mtp.errors import UserError
from weighted_mtp.training import checkpoint as ckpt
from weighted_mtp.training.checkpoint.files import clean_stale, link_dir, write_manifest


class Evil:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def flip_tensor_bytes(path: Path, n: int = 64) -> None:
    """Flip ``n`` bytes inside the tensor data of a safetensors file (after its header)."""
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0] + 16
    assert len(raw) > start + n
    for i in range(start, start + n):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture
def trained(make_cfg):
    """A baseline run: periodic checkpoints at steps 2, 4, 6 (all kept), final at 8."""
    common = ["checkpoint.save_checkpoint_every=0.25", "checkpoint.save_total_limit=0"]
    cfg = make_cfg("baseline", "training.learning_rate=1e-3", *common)
    app.run(cfg)
    return cfg, common


def test_a_crafted_pickle_never_runs(make_cfg, tmp_path, capsys, micro_storage) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoint_final.pt"
    torch.save({"format": 1, "payload": Evil(marker)}, evil)
    data = micro_storage / "datasets" / "synthetic" / "processed" / "test.jsonl"

    code, err = cli(capsys, "export", "--checkpoint", str(evil), "--to", "hf", str(tmp_path / "o"))
    assert code == 2 and "checkpoint migrate" in err
    code, err = cli(capsys, "evaluate", "--checkpoint", str(evil), "--data", str(data))
    assert code == 2 and str(evil) in err
    with pytest.raises(UserError, match="old pickle format"):
        ckpt.load_policy(evil)
    with pytest.raises(UserError, match="old pickle format"):
        app.run(make_cfg("baseline", f"checkpoint.resume={evil}"))
    code, err = cli(capsys, "checkpoint", "migrate", str(evil))  # weights-only unpickler
    assert code == 2 and "refused by the weights-only unpickler" in err
    # the same payload as a Meta model's consolidated.pth
    meta_dir = tmp_path / "meta"
    shutil.copytree(micro_storage / "models" / "micro-mtp", meta_dir)
    for f in meta_dir.glob("*.safetensors"):
        f.unlink()
    torch.save({"tok_embeddings.weight": Evil(marker)}, meta_dir / "consolidated.pth")
    with pytest.raises(UserError, match="weights-only"):
        ckpt.load_policy(meta_dir)
    assert not marker.exists()


def test_flipped_bytes_are_refused_and_auto_falls_back(
    trained, make_cfg, capsys, tmp_path, micro_storage
) -> None:
    cfg, common = trained
    save_dir = Path(cfg.checkpoint.save_dir)
    final = save_dir / "checkpoint_final"
    assert sorted(p.name for p in final.iterdir()) == [
        "config.yaml",
        "manifest.json",
        "optimizer.safetensors",
        "rng.safetensors",
        "state.json",
        "weights.safetensors",
    ]
    assert main(["checkpoint", "verify", str(final)]) == 0
    flip_tensor_bytes(final / "weights.safetensors")
    weights = str(final / "weights.safetensors")

    with pytest.raises(UserError, match=f"{weights}: corrupted"):
        ckpt.load_policy(final)
    code, err = cli(capsys, "export", "--checkpoint", str(final), "--to", "hf", str(tmp_path / "o"))
    assert code == 2 and weights in err
    code, err = cli(capsys, "checkpoint", "verify", str(final))
    assert code == 2 and weights in err
    data = micro_storage / "datasets" / "synthetic" / "processed" / "test.jsonl"
    code, err = cli(capsys, "evaluate", "--checkpoint", str(final), "--data", str(data))
    assert code == 2 and weights in err
    with pytest.raises(UserError, match="corrupted"):
        lr = "training.learning_rate=1e-3"
        app.run(make_cfg("baseline", lr, *common, f"checkpoint.resume={final}"))

    # auto: the newest valid one (step 6), said so; stale temp files of killed writes go
    (save_dir / ".checkpoint_step8.tmp").mkdir()
    (save_dir / ".checkpoint_step8.tmp" / "weights.safetensors").write_bytes(b"x" * 100)
    flip_tensor_bytes(save_dir / "checkpoint_step6" / "optimizer.safetensors")
    resumed = make_cfg("baseline", "training.learning_rate=1e-3", *common, "checkpoint.resume=auto")
    result = app.run(resumed)
    err = capsys.readouterr().err
    assert "skips checkpoint_final" in err and "skips checkpoint_step6" in err
    assert "resuming from" in err and "checkpoint_step4" in err
    assert result["step"] == 8
    assert not (save_dir / ".checkpoint_step8.tmp").exists()
    assert main(["checkpoint", "verify", str(final)]) == 0  # rewritten


def test_best_always_matches_the_recorded_best(trained, make_cfg) -> None:
    cfg, common = trained
    save_dir = Path(cfg.checkpoint.save_dir)
    best_step = ckpt.Checkpoint(save_dir / "checkpoint_final").meta["best_step"]
    assert ckpt.Checkpoint(save_dir / "checkpoint_best").step == best_step
    # a kill cut the update of best: it still holds an older checkpoint
    periodic = ckpt.periodic_checkpoints(save_dir)
    other = next(p for p in periodic if p.name != f"checkpoint_step{best_step}")
    link_dir(other, save_dir / "checkpoint_best")
    assert ckpt.Checkpoint(save_dir / "checkpoint_best").step != best_step
    app.run(make_cfg("baseline", "training.learning_rate=1e-3", *common, "checkpoint.resume=auto"))
    assert ckpt.Checkpoint(save_dir / "checkpoint_best").step == best_step


def test_resume_refuses_a_changed_plan_unless_allowed(trained, make_cfg) -> None:
    cfg, common = trained
    final = Path(cfg.checkpoint.save_dir) / "checkpoint_final"
    base = ["training.learning_rate=1e-3", *common, f"checkpoint.resume={final}"]
    with pytest.raises(UserError) as e:
        app.run(make_cfg("baseline", *base, "training.batch_size=4", "data_sampling.seed=7"))
    assert "training.batch_size: 2 -> 4" in str(e.value)
    assert "data_sampling.seed: 42 -> 7" in str(e.value)
    assert "allow_config_change" in str(e.value)
    allowed = "checkpoint.allow_config_change=[training.batch_size]"
    result = app.run(make_cfg("baseline", *base, "training.batch_size=4", allowed))
    assert result["step"] == 8  # continued at the checkpoint's position
    # other content of the training file, same path
    train = Path(cfg.dataset.train)
    copy = train.parent.parent / "copy" / train.name
    copy.parent.mkdir(exist_ok=True)
    lines = train.read_text().splitlines(keepends=True)
    copy.write_text("".join(lines[1:] + lines[:1]))
    with pytest.raises(UserError, match="dataset.train: .*sha256"):
        app.run(make_cfg("baseline", *base, f"dataset.train={copy}"))
    with pytest.raises(UserError, match="is a baseline checkpoint; this run is stage critic"):
        app.run(make_cfg("critic", f"checkpoint.resume={final}"))


def test_another_model_shape_and_missing_config(trained, make_cfg, tmp_path, micro_storage):
    from weighted_mtp.models.formats import load_model, save_safetensors
    from weighted_mtp.models.mtp import ModelArgs, MTPTransformer

    cfg, common = trained
    final = Path(cfg.checkpoint.save_dir) / "checkpoint_final"
    args = load_model(cfg.models.policy.path).args.to_dict() | {"dim": 32, "n_heads": 2}
    wider = tmp_path / "other-model"
    save_safetensors(MTPTransformer(ModelArgs.from_dict(args)), wider)
    tok = micro_storage / "models" / "micro-mtp" / "tokenizer"
    with pytest.raises(UserError, match="another model shape"):
        app.run(make_cfg("baseline", "training.learning_rate=1e-3", *common,
                         f"models.policy.path={wider}", f"models.policy.tokenizer_path={tok}",
                         f"checkpoint.resume={final}"))  # fmt: skip
    (final / "config.yaml").unlink()
    write_manifest(final)  # a complete-looking checkpoint without its config
    with pytest.raises(UserError, match="config.yaml: missing"):
        ckpt.load_policy(final)


def test_checkpoints_work_from_any_directory(trained, tmp_path, monkeypatch) -> None:
    cfg, _ = trained
    final = Path(cfg.checkpoint.save_dir) / "checkpoint_final"
    stored = ckpt.Checkpoint(final).config["models"]["policy"]["path"]
    assert Path(stored).is_absolute()
    monkeypatch.chdir(tmp_path)
    model, _ = ckpt.load_policy(final)
    assert model.state_dict()["output.weight"].shape[0] > 0
    # a tree moved elsewhere: the absolute paths are gone; the relative ones lead outside
    # the checkpoint, so they are not followed unless the model is passed explicitly
    config = yaml.safe_load((final / "config.yaml").read_text())
    config["models"]["policy"] |= {"path": "/gone/micro-mtp", "tokenizer_path": None}
    (final / "config.yaml").write_text(yaml.safe_dump(config))
    write_manifest(final)
    with pytest.raises(UserError, match="leads outside the checkpoint directory"):
        ckpt.load_policy(final)
    again, _ = ckpt.load_policy(final, model_path=stored)
    assert torch.equal(again.state_dict()["output.weight"], model.state_dict()["output.weight"])


def test_clean_stale_restores_a_cut_swap(tmp_path: Path) -> None:
    good = tmp_path / "checkpoint_best"
    good.mkdir()
    (good / "state.json").write_text("{}")
    write_manifest(good)
    os.replace(good, tmp_path / ".checkpoint_best.old")  # killed between the two renames
    (tmp_path / ".checkpoint_final.tmp").mkdir()
    (tmp_path / ".checkpoint_step4.tmp").mkdir()
    (tmp_path / "keep.txt").write_text("")
    removed = clean_stale(tmp_path)
    assert sorted(removed) == [".checkpoint_final.tmp", ".checkpoint_step4.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_best", "keep.txt"]


def test_migrate_an_old_pickle_checkpoint(make_cfg, tmp_path, capsys) -> None:
    """An old format-1 file, written the way the old Checkpointer did, converts exactly."""
    from weighted_mtp.models.formats import load_model
    from weighted_mtp.training.optim import build_optimizer, build_scheduler

    cfg = make_cfg("baseline")
    model = load_model(cfg.models.policy.path)
    opt = build_optimizer(model.parameters(), 1e-3, 0.1)
    sched = build_scheduler(opt, 10, 0.0, "cosine", 0.0)
    sum((p.float() ** 2).sum() for p in model.parameters()).backward()
    opt.step()
    sched.step()
    random.seed(3)
    np.random.seed(4)
    old = {
        "format": 1, "modules": {"policy": model.state_dict()}, "optimizer": opt.state_dict(),
        "stage": "baseline", "step": 1, "epoch": 0.1, "value_head_config": None,
        "scheduler": sched.state_dict(), "scaler": {},
        "sampler": {"consumed": 2, "world_size": 1, "fingerprint": "f"},
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state()},
        "best_val_loss": float("inf"), "val": {}, "provenance": {},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }  # fmt: skip
    src = tmp_path / "checkpoint_step1.pt"
    torch.save(old, src)
    code, err = cli(capsys, "checkpoint", "migrate", str(src))
    assert code == 0, err
    new = ckpt.Checkpoint(tmp_path / "checkpoint_step1")
    new.manifest.verify_all()
    osd = json.loads((new.path / "state.json").read_text())["optimizer"]
    assert set(osd["state"]) == {f"policy.{n}" for n, _ in model.named_parameters()}
    optim = new.part("optimizer")
    for name, p in model.named_parameters():
        assert torch.equal(optim.full(f"state.policy.{name}.exp_avg"), opt.state[p]["exp_avg"])
    loaded, _ = ckpt.load_policy(new.path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    ckpt.set_rng_state(new.rng())
    a = (random.random(), np.random.rand())
    random.setstate(old["rng"]["python"])
    np.random.set_state(old["rng"]["numpy"])
    assert a == (random.random(), np.random.rand())
