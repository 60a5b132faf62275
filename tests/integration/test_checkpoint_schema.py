"""Crafted checkpoints stay confined to their directory and every malformed field is an
exit 2 naming the file and the field (issue 22, item 4)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import two_step_baseline
from weighted_mtp.__main__ import main
from weighted_mtp.errors import TrainingDiverged, UserError, report
from weighted_mtp.training import checkpoint as ckpt
from weighted_mtp.training.checkpoint.files import write_json, write_manifest
from weighted_mtp.training.checkpoint.manager import Checkpointer


@pytest.fixture(scope="module")
def final(micro_storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid checkpoint_final of a 2-step baseline run (read-only: tests copy it)."""
    from weighted_mtp import app

    root = tmp_path_factory.mktemp("schema")
    cfg = two_step_baseline(micro_storage, root / "run")
    app.run(cfg)
    return root / "run" / "checkpoint_final"


@pytest.fixture
def ck(final: Path, tmp_path: Path) -> Path:
    """A copy of ``final``, two levels below tmp_path, to damage."""
    dst = tmp_path / "save" / "checkpoint_final"
    shutil.copytree(final, dst)
    return dst


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return code, out.err


def verify(capsys, path: Path) -> tuple[int, str]:
    return cli(capsys, "checkpoint", "verify", str(path))


def export(capsys, path: Path) -> tuple[int, str]:
    return cli(capsys, "export", "--checkpoint", str(path), "--to", "hf", str(path.parent / "o"))


def edit_manifest(p: Path, change) -> None:
    m = json.loads((p / "manifest.json").read_text())
    change(m["files"])
    (p / "manifest.json").write_text(json.dumps(m))


def edit_json(p: Path, name: str, change) -> None:
    data = json.loads((p / name).read_text())
    change(data)
    (p / name).write_text(json.dumps(data))
    write_manifest(p)  # a consistent manifest: the content itself is wrong


# --- 1. manifest names and entries ----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../../../../etc/passwd", "/etc/passwd", "weights-/../../x.safetensors", "", "..", ".x"],
)
def test_manifest_names_outside_the_directory_are_refused(ck, capsys, name) -> None:
    size = os.path.getsize("/etc/passwd")
    edit_manifest(ck, lambda f: f.__setitem__(name, {"size": size, "sha256": "0" * 64}))
    code, err = verify(capsys, ck)
    assert code == 2 and "not a plain file name" in err and repr(name) in err
    code, err = export(capsys, ck)
    assert code == 2 and "not a plain file name" in err


def test_symlinks_are_not_followed(ck, tmp_path, capsys) -> None:
    outside = tmp_path / "outside.safetensors"
    shutil.copy(ck / "rng.safetensors", outside)
    (ck / "rng.safetensors").unlink()
    (ck / "rng.safetensors").symlink_to(outside)  # same bytes: the manifest would match
    code, err = verify(capsys, ck)
    assert code == 2 and f"{ck / 'rng.safetensors'}: not read (a symlink" in err
    # the manifest itself a symlink
    shutil.move(ck / "manifest.json", tmp_path / "manifest.json")
    (ck / "manifest.json").symlink_to(tmp_path / "manifest.json")
    code, err = verify(capsys, ck)
    assert code == 2 and f"{ck / 'manifest.json'}: not read (a symlink" in err


@pytest.mark.parametrize(
    "change, expect",
    [
        (lambda f: f["state.json"].pop("sha256"), "files['state.json'].sha256 must be"),
        (lambda f: f.__setitem__("state.json", "abc"), "files['state.json'] must be an object"),
        (lambda f: f["state.json"].__setitem__("size", "12"), "files['state.json'].size must"),
        (lambda f: f["rng.safetensors"].__setitem__("size", True), "files['rng.safetensors'].size"),
        (lambda f: f.clear() or f.update({"a": None}), "files['a'] must be an object"),
    ],
)
def test_malformed_manifest_entries_exit_2(ck, capsys, change, expect) -> None:
    edit_manifest(ck, change)
    code, err = verify(capsys, ck)
    assert code == 2 and str(ck / "manifest.json") in err and expect in err


def test_manifest_files_not_an_object(ck, capsys) -> None:
    m = json.loads((ck / "manifest.json").read_text())
    (ck / "manifest.json").write_text(json.dumps(m | {"files": ["state.json"]}))
    code, err = verify(capsys, ck)
    assert code == 2 and "field 'files' must be an object" in err


# --- 2. state.json and config.yaml ----------------------------------------------------


@pytest.mark.parametrize(
    "field, value, expect",
    [
        ("step", "8", "field 'step' must be an integer >= 0"),
        ("stage", 3, "field 'stage' must be a stage name"),
        ("rng", [], "field 'rng' must be an object"),
        ("relative_paths", {"models.policy.path": 3}, "field 'relative_paths'"),
        ("best_val_loss", "low", "field 'best_val_loss'"),
    ],
)
def test_state_fields_of_the_wrong_type_exit_2(ck, capsys, field, value, expect) -> None:
    edit_json(ck, "state.json", lambda s: s.__setitem__(field, value))
    code, err = verify(capsys, ck)
    assert code == 2 and f"{ck / 'state.json'}: {expect}" in err


def test_state_missing_field_and_not_an_object(ck, capsys) -> None:
    edit_json(ck, "state.json", lambda s: s.pop("scheduler"))
    code, err = verify(capsys, ck)
    assert code == 2 and "field 'scheduler' is missing" in err
    (ck / "state.json").write_text("[1]")
    write_manifest(ck)
    code, err = verify(capsys, ck)
    assert code == 2 and "state.json: must be a JSON object" in err


def _relocate(ck: Path, **policy) -> None:
    config = yaml.safe_load((ck / "config.yaml").read_text())
    config["models"]["policy"] |= policy
    (ck / "config.yaml").write_text(yaml.safe_dump(config))
    write_manifest(ck)


def test_relative_paths_outside_the_checkpoint_are_not_followed(ck, final, capsys) -> None:
    model = ckpt.Checkpoint(final).config["models"]["policy"]["path"]
    # the recorded absolute path is gone: state.json's relative one leads outside
    _relocate(ck, path="/gone/micro-mtp", tokenizer_path=None)
    rel = os.path.relpath(model, ck)
    edit_json(
        ck, "state.json", lambda s: s["relative_paths"].__setitem__("models.policy.path", rel)
    )
    with pytest.raises(UserError, match="relative_paths.models.policy.path=.* leads outside"):
        ckpt.load_policy(ck)
    code, err = export(capsys, ck)
    assert code == 2 and "leads outside the checkpoint directory" in err
    # given explicitly, it is used
    m, _ = ckpt.load_policy(ck, model_path=model)
    assert m.state_dict()["output.weight"].shape[0] > 0
    # a relative value in config.yaml is relative to the checkpoint, confined the same way
    _relocate(ck, path=rel, tokenizer_path=None)
    with pytest.raises(UserError, match=r"config.yaml: models.policy.path=.* leads outside"):
        ckpt.load_policy(ck)
    # inside the checkpoint it is followed (a model shipped with the checkpoint)
    shutil.copytree(model, ck / "base")
    _relocate(ck, path="base", tokenizer_path=None)
    m2, _ = ckpt.load_policy(ck)
    assert torch.equal(m2.state_dict()["output.weight"], m.state_dict()["output.weight"])


# --- 3. safetensors metadata ----------------------------------------------------------


def _rewrite_tensors(path: Path, change, metadata: dict | None = None) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=metadata if metadata is not None else meta)
    write_manifest(path.parent)


def test_chunks_claiming_a_huge_tensor_are_refused(ck, capsys) -> None:
    f = ck / "weights.safetensors"
    key, t = next((k, v) for k, v in load_file(str(f)).items() if v.ndim == 2)
    chunks = {key: {"shape": [2**20, 2**20], "offsets": [0, 0]}}
    _rewrite_tensors(f, lambda _: None, {"chunks": json.dumps(chunks)})
    code, err = export(capsys, ck)
    assert code == 2 and f"weights tensor {key}" in err and "[1048576, 1048576]" in err
    bad = {key: {"shape": [-1, 3], "offsets": [0]}}
    _rewrite_tensors(f, lambda _: None, {"chunks": json.dumps(bad)})
    code, err = export(capsys, ck)
    assert code == 2 and f"metadata chunks['{key}']" in err


def test_rng_tensor_relabelled_is_refused(ck) -> None:
    def relabel(ts):
        k = next(k for k, v in ts.items() if v.dtype == torch.uint8)
        ts[k] = ts[k].view(torch.int8)

    _rewrite_tensors(ck / "rng.safetensors", relabel)
    with pytest.raises(UserError, match=r"rng torch must be a U8 tensor, got torch.int8"):
        ckpt.Checkpoint(ck).rng()


def test_weights_relabelled_as_integers_are_refused(ck, capsys) -> None:
    f = ck / "weights.safetensors"
    key = next(k for k, v in load_file(str(f)).items() if v.dtype == torch.float32)

    def relabel(ts):
        ts[key] = ts[key].view(torch.int32)

    _rewrite_tensors(f, relabel)
    code, err = export(capsys, ck)
    assert code == 2 and f"tensor {key} is torch.int32" in err
    reader = ckpt.Checkpoint(ck).part("weights")  # resume's path
    with pytest.raises(UserError, match=f"weights tensor {key}: checkpoint dtype I32"):
        reader.into(key, torch.empty(reader.full(key).shape))


# --- 4. a NaN metric at save ----------------------------------------------------------


def test_a_nan_metric_at_save_is_a_clear_error(tmp_path, capsys) -> None:
    saver = SimpleNamespace(info=None, save_dir=tmp_path, step=3)
    with pytest.raises(TrainingDiverged) as e:
        Checkpointer.save(saver, "checkpoint_final", {"val/loss": math.nan, "val/x": 1.0})
    assert "validation val/loss=nan at step 3" in str(e.value)
    assert report(e.value) == 1 and "error: validation val/loss=nan" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(UserError, match="state.json: not written, a value is not a finite"):
        write_json(tmp_path / "state.json", {"val": {"val/loss": math.inf}})
