"""Malformed input corpus: every case exits 2, names the field or file:line, no traceback.

Cases run in process through the CLI's ``main`` (``python -m weighted_mtp``), catching
stderr; a handful at the end run as real subprocesses (both entry points) to prove the
exit code end to end. Kinds: config overrides, config files, data lines, training-time
checks, checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, storage_overrides, two_step_baseline
from weighted_mtp.__main__ import main
from weighted_mtp.training.checkpoint.files import write_manifest


@dataclass
class Env:
    root: Path  # scratch dir of this module
    config: Path  # a valid flat config on the micro assets
    checkpoint: Path  # a valid checkpoint_final of a 2-step run
    record: dict  # a valid processed record

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.root / "in" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return p

    def jsonl(self, name: str, lines: list[str | bytes]) -> Path:
        raw = [x if isinstance(x, bytes) else x.encode() for x in lines]
        return self.file(name, b"\n".join(raw) + b"\n")

    def rec(self, **changes) -> str:
        r = json.loads(json.dumps(self.record))
        for k, v in changes.items():
            if k.startswith("meta_"):
                r["metadata"][k[5:]] = v
            elif v is _DROP:
                r.pop(k)
            else:
                r[k] = v
        return json.dumps(r)

    def config_text(self, **sections) -> str:
        data = yaml.safe_load(self.config.read_text())
        data.update(sections)
        return yaml.safe_dump(data)

    def ckpt_copy(self, name: str) -> Path:
        dst = self.root / "ck" / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(self.checkpoint, dst)
        return dst


_DROP = object()


@pytest.fixture(scope="module")
def env(micro_storage: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    from omegaconf import OmegaConf

    from weighted_mtp import app

    root = tmp_path_factory.mktemp("robust")
    cfg = two_step_baseline(micro_storage, root / "run")
    config = root / "base.yaml"
    config.write_text(OmegaConf.to_yaml(cfg))
    app.run(cfg)
    train = micro_storage / "datasets" / "synthetic" / "processed" / "train.jsonl"
    record = json.loads(train.read_text().splitlines()[0])
    return Env(root, config, root / "run" / "checkpoint_final", record)


def flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", raw[:8])[0] + 8 if path.suffix == ".safetensors" else 2
    for i in range(start, min(start + 64, len(raw))):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


Case = Callable[[Env], tuple[list[str], list[str]]]  # env -> (argv, expected in stderr)


def override(*ovs: str, expect: str | list[str]) -> Case:
    def case(e: Env) -> tuple[list[str], list[str]]:
        argv = ["validate-config", "--config", str(e.config)]
        for o in ovs:
            argv += ["--override", o]
        return argv, [expect] if isinstance(expect, str) else expect

    return case


CONFIG_OVERRIDES: dict[str, Case] = {
    "batch_zero": override("training.batch_size=0", expect="training.batch_size = 0"),
    "batch_type": override("training.batch_size=abc", expect="training.batch_size"),
    "lr_high": override("training.learning_rate=2", expect="training.learning_rate"),
    "lr_negative": override("training.learning_rate=-1", expect="training.learning_rate"),
    "epochs_zero": override("training.n_epochs=0", expect="training.n_epochs"),
    "epochs_inf": override("training.n_epochs=inf", expect="training.n_epochs = inf"),
    "epochs_nan": override("training.n_epochs=nan", expect="training.n_epochs = nan"),
    "save_every_inf": override(
        "checkpoint.save_checkpoint_every=inf", expect="checkpoint.save_checkpoint_every = inf"
    ),
    "save_every_negative": override(
        "checkpoint.save_checkpoint_every=-1", expect="checkpoint.save_checkpoint_every"
    ),
    "total_limit_negative": override(
        "checkpoint.save_total_limit=-1", expect="checkpoint.save_total_limit"
    ),
    "warmup_one": override("training.warmup_ratio=1.0", expect="training.warmup_ratio"),
    "min_lr_two": override("training.min_lr_ratio=2", expect="training.min_lr_ratio"),
    "gamma_zero": override("training.gamma=0", expect="training.gamma"),
    "lam_high": override("training.lam=1.5", expect="training.lam"),
    "correct_ratio": override("data_sampling.correct_ratio=1.5", expect="correct_ratio"),
    "n_samples_zero": override("data_sampling.n_samples=0", expect="data_sampling.n_samples"),
    "batch_over_samples": override("training.batch_size=100", expect="must be <= data_sampling"),
    "max_length_negative": override("dataset.max_length=-5", expect="dataset.max_length"),
    "log_interval_zero": override("training.log_interval=0", expect="training.log_interval"),
    "clip_order": override(
        "training.weight_clip_min=5", "training.weight_clip_max=1", expect="weight_clip_min"
    ),
    "dtype": override("models.policy.dtype=float8", expect="models.policy.dtype"),
    "loss_type": override("training.loss_type=l1", expect="training.loss_type"),
    "scheduler": override("training.lr_scheduler=step", expect="training.lr_scheduler"),
    "amp_dtype": override("runtime.amp_dtype=int8", expect="runtime.amp_dtype"),
    "parallelism": override("runtime.distributed=deepspeed", expect="runtime.distributed"),
    "device_word": override("runtime.device=gpu", expect="runtime.device = 'gpu'"),
    "device_index": override("runtime.device=cuda:x", expect="runtime.device = 'cuda:x'"),
    "value_head_type": override("models.value_head.type=conv", expect="models.value_head.type"),
    "stage_unknown": override("experiment.stage=unknown", expect="experiment.stage"),
    "name_empty": override("experiment.name=", expect="experiment.name"),
    "plus_typo": override("+training.batch_sz=4", expect="training.batch_sz = 4"),
    "plus_top_level": override("+foo=1", expect="foo = 1"),
    "force_add_typo": override("++training.lrr=1", expect="training.lrr"),
    "typo_no_plus": override("training.lrr=1", expect="no field 'training.lrr'"),
    "weighting_module": override("weighting._target_=nope.Nope", expect="weighting._target_"),
    "weighting_class": override(
        "weighting._target_=weighted_mtp.weighting.NoSuchClass", expect="has no NoSuchClass"
    ),
    "weighting_argument": override("+weighting.foo=1", expect="does not take these"),
    "sampler_target": override("data_sampling._target_=x.Y", expect="data_sampling._target_"),
    "allow_unknown": override(
        "checkpoint.allow_config_change=[foo]", expect="checkpoint.allow_config_change"
    ),
    "resume_missing": override("checkpoint.resume=/nonexistent", expect="checkpoint.resume"),
    "policy_missing": override("models.policy.path=/nonexistent", expect="models.policy.path"),
    "train_missing": override("dataset.train=/nonexistent.jsonl", expect="dataset.train"),
    "malformed_form": override("experiment.name test", expect="the form is key=value"),
    "list_index_range": override(
        "data_sampling.curriculum_schedule[9].epoch_range=[0.0,0.5]",
        expect=["data_sampling.curriculum_schedule has 0 item(s)", "[9] is out of range"],
    ),
    "list_index_word": override(
        "data_sampling.curriculum_schedule[x].epoch_range=1", expect="non-negative integer"
    ),
    "bins_index_range": override(
        "data_sampling.difficulty_bins.low[5]=3",
        expect="data_sampling.difficulty_bins.low has 2 item(s)",
    ),
    "sweep_value": override("training.beta=0.5,0.8", expect="is a sweep"),
    "delete_missing": override("~training.nope", expect="cannot delete"),
    "add_existing": override("+training.batch_size=4", expect="already exists"),
    "curriculum_empty": override(
        "data_sampling.curriculum_learning=true", expect="data_sampling.curriculum_schedule"
    ),
}


def config_file(name: str, content: Callable[[Env], str | bytes], expect: list[str]) -> Case:
    def case(e: Env) -> tuple[list[str], list[str]]:
        p = e.file(name, content(e))
        return ["validate-config", "--config", str(p)], [x.format(file=p) for x in expect]

    return case


CONFIG_FILES: dict[str, Case] = {
    "non_utf8": config_file(
        "u.yaml", lambda e: b"experiment:\n  name: x\xff\n", ["{file}:2: not UTF-8"]
    ),  # fmt: skip
    "bad_yaml": config_file("y.yaml", lambda e: "a: [1,\nb: 2\n", ["{file}:", "not valid YAML"]),
    "top_list": config_file("l.yaml", lambda e: "- 1\n- 2\n", ["{file}: expected a mapping"]),
    "empty": config_file("e.yaml", lambda e: "", ["{file}: expected a mapping"]),
    "section_scalar": config_file(
        "s.yaml", lambda e: e.config_text(training=5), ["{file}:", "training: must be a section"]
    ),
    "nested_scalar": config_file(
        "n.yaml",
        lambda e: e.config_text(models={"policy": 3}),
        ["{file}:", "models.policy: must be a section"],
    ),
    "unknown_section": config_file(
        "k.yaml", lambda e: e.config_text(trainin={"batch_size": 2}), ["{file}:", "trainin"]
    ),
    "wrong_type": config_file(
        "t.yaml",
        lambda e: e.config_text(training={"batch_size": "abc"}),
        ["{file}:", "training.batch_size"],
    ),
    "non_finite": config_file(
        "f.yaml",
        lambda e: e.config_text(checkpoint={"save_checkpoint_every": float("inf")}),
        ["checkpoint.save_checkpoint_every = inf"],
    ),
    "missing_file": lambda e: (
        ["validate-config", "--config", str(e.root / "nope.yaml")],
        ["config file not found"],
    ),
}


def data_lines(lines: Callable[[Env], list[str | bytes]], line: int, expect: str) -> Case:
    def case(e: Env) -> tuple[list[str], list[str]]:
        p = e.jsonl(f"d{abs(hash(expect)) % 10**8}.jsonl", lines(e))
        return ["prepare", "index", str(p)], [f"{p}:{line}", expect]

    return case


DATA: dict[str, Case] = {
    "invalid_json": data_lines(lambda e: [e.rec(), "{not json"], 2, "invalid JSON"),
    "missing_output": data_lines(lambda e: [e.rec(output=_DROP)], 1, "'output'"),
    "label_type": data_lines(lambda e: [e.rec(is_correct="yes")], 1, "is_correct"),
    "instruction_type": data_lines(lambda e: [e.rec(), e.rec(instruction=3)], 2, "instruction"),
    "missing_difficulty": data_lines(
        lambda e: [e.rec(metadata={"source": "s", "problem_id": "p"})], 1, "metadata.difficulty"
    ),
    "difficulty_range": data_lines(
        lambda e: [e.rec(), e.rec(task_id="b", meta_difficulty=99999)],
        2,
        "outside the index's range",
    ),
    "problem_id_type": data_lines(lambda e: [e.rec(meta_problem_id=5)], 1, "problem_id"),
    "json_list": data_lines(lambda e: ["[1, 2]"], 1, "expected a JSON object"),
    "non_utf8_line": data_lines(
        lambda e: [e.rec(), e.rec(task_id="b"), b"\xff\xfe{}"], 3, "malformed"
    ),
    "metadata_type": data_lines(lambda e: [e.rec(metadata=[1])], 1, "metadata"),
    "duplicate_task_id": data_lines(
        lambda e: [e.rec(), e.rec(task_id="other"), e.rec()], 3, "duplicate task_id"
    ),
    "too_many_tests": data_lines(
        lambda e: [e.rec(meta_tests=[{"input": "", "output": ""}] * 1001)], 1, "over the cap"
    ),
}


def train(*ovs: str, data: Callable[[Env], Path] | None = None, expect: list[str]) -> Case:
    def case(e: Env) -> tuple[list[str], list[str]]:
        argv = ["train", "--config", str(e.config)]
        extra = list(ovs)
        if data is not None:
            p = data(e)
            # a fresh run on other data: not the module run's save dir (that would be refused
            # as another run's checkpoints before the data is read)
            extra += [f"dataset.train={p}", f"checkpoint.save_dir={p.parent / ('run-' + p.stem)}"]
            expect_ = [x.format(file=p) for x in expect]
        else:
            expect_ = expect
        for o in extra:
            argv += ["--override", o]
        return argv, expect_

    return case


TRAINING: dict[str, Case] = {
    "empty_train_file": train(
        data=lambda e: e.file("empty.jsonl", ""), expect=["{file}: no records"]
    ),
    "blank_train_file": train(
        data=lambda e: e.file("blank.jsonl", "\n\n  \n"), expect=["{file}: no records"]
    ),
    "train_difficulty": train(
        data=lambda e: e.jsonl("difficult.jsonl", [e.rec(meta_difficulty=-40000)]),
        expect=["{file}:1:", "metadata.difficulty"],
    ),
    "max_length_tiny": train("dataset.max_length=5", expect=["dataset.max_length=5 is too small"]),
    "cuda_missing": train("runtime.device=cuda", expect=["runtime.device=cuda"]),
    "mps_missing": train("runtime.device=mps", expect=["runtime.device=mps"]),
}


def checkpoint(name: str, damage: Callable[[Path], None], expect: str, cmd: str = "verify") -> Case:
    def case(e: Env) -> tuple[list[str], list[str]]:
        p = e.ckpt_copy(name)
        damage(p)
        if cmd == "export":
            return ["export", "--checkpoint", str(p), "--to", "hf", str(e.root / "hf")], [expect]
        return ["checkpoint", "verify", str(p)], [expect.format(dir=p)]

    return case


def _rewrite(name: str, text: str) -> Callable[[Path], None]:
    def damage(p: Path) -> None:
        (p / name).write_text(text)
        write_manifest(p)  # consistent manifest: the content itself is wrong

    return damage


def _drop_config(p: Path) -> None:
    (p / "config.yaml").unlink()
    write_manifest(p)


def _manifest_version(p: Path) -> None:
    m = json.loads((p / "manifest.json").read_text())
    (p / "manifest.json").write_text(json.dumps(m | {"version": 9}))


def _edit_state(p: Path) -> None:
    s = json.loads((p / "state.json").read_text())
    (p / "state.json").write_text(json.dumps(s | {"step": 1000}, indent=1))


def _truncate(p: Path) -> None:
    f = p / "weights.safetensors"
    f.write_bytes(f.read_bytes()[:-100])


def _old_fsdp(p: Path) -> None:
    for f in p.iterdir():
        f.unlink()
    torch.save({"format": 1}, p / "meta.pt")


CHECKPOINTS: dict[str, Case] = {
    "flip_weights": checkpoint(
        "w", lambda p: flip(p / "weights.safetensors"), "{dir}/weights.safetensors: corrupted"
    ),  # fmt: skip
    "flip_optimizer": checkpoint(
        "o", lambda p: flip(p / "optimizer.safetensors"), "{dir}/optimizer.safetensors: corrupted"
    ),  # fmt: skip
    "flip_rng": checkpoint(
        "r", lambda p: flip(p / "rng.safetensors"), "{dir}/rng.safetensors: corrupted"
    ),  # fmt: skip
    "edit_state": checkpoint("s", _edit_state, "{dir}/state.json: corrupted"),
    "truncated": checkpoint("t", _truncate, "{dir}/weights.safetensors: corrupted"),
    "no_manifest": checkpoint(
        "m", lambda p: (p / "manifest.json").unlink(), "manifest.json: missing"
    ),  # fmt: skip
    "manifest_json": checkpoint(
        "j", lambda p: (p / "manifest.json").write_text("{"), "not a valid checkpoint manifest"
    ),  # fmt: skip
    "manifest_version": checkpoint("v", _manifest_version, "format version 9"),
    "missing_file": checkpoint(
        "f", lambda p: (p / "rng.safetensors").unlink(), "{dir}/rng.safetensors: missing"
    ),  # fmt: skip
    "no_config": checkpoint("c", _drop_config, "config.yaml: missing", cmd="export"),
    "state_not_json": checkpoint(
        "n", _rewrite("state.json", "{oops"), "state.json: not valid JSON"
    ),  # fmt: skip
    "config_not_yaml": checkpoint(
        "y", _rewrite("config.yaml", "a: [1,\nb"), "config.yaml: not valid YAML", cmd="export"
    ),  # fmt: skip
    "weights_garbage": checkpoint(
        "g", _rewrite("weights.safetensors", "garbage"), "not a readable safetensors", cmd="export"
    ),  # fmt: skip
    "old_fsdp_dir": checkpoint("d", _old_fsdp, "old pickle format", cmd="export"),
    "empty_dir": checkpoint(
        "e", lambda p: [f.unlink() for f in p.iterdir()], "manifest.json: missing"
    ),  # fmt: skip
    "old_pt_file": lambda e: (
        ["checkpoint", "verify", str(e.file("checkpoint_final.pt", b"PK-not-read"))],
        ["old pickle format", "checkpoint migrate"],
    ),
    "export_missing": lambda e: (
        ["export", "--checkpoint", str(e.root / "nope"), "--to", "hf", str(e.root / "o")],
        ["does not exist"],
    ),
}


def _with(*ovs: Callable[[Env], str], cmd: str = "validate-config", expect: list[str]) -> Case:
    """A case whose overrides depend on the env's files (``ovs`` build them)."""

    def case(e: Env) -> tuple[list[str], list[str]]:
        argv = [cmd, "--config", str(e.config)]
        for o in ovs:
            argv += ["--override", o(e)]
        return argv, [x.format(config=e.config) for x in expect]

    return case


def _train_path(e: Env) -> str:
    return yaml.safe_load(e.config.read_text())["dataset"]["train"]


def _short_context_model(e: Env) -> str:
    """The micro policy with ``max_seq_len: 32`` in its params.json (weights linked)."""
    src = Path(yaml.safe_load(e.config.read_text())["models"]["policy"]["path"])
    dst = e.root / "in" / "short-context"
    if not dst.exists():
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.name != "params.json":
                (dst / f.name).symlink_to(f)
        params = json.loads((src / "params.json").read_text())
        (dst / "params.json").write_text(json.dumps(params | {"max_seq_len": 32}))
    return f"models.policy.path={dst}"


_BOMB = (
    "a: &a ["
    + ",".join(["lol"] * 9)
    + "]\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(8)
    )
)

INPUTS: dict[str, Case] = {
    "name_traversal": override(
        "experiment.name=../../../../x",
        expect=["experiment.name = '../../../../x'", "path separator", "Fix:"],
    ),
    "name_dotdot": override("experiment.name=..", expect=["experiment.name = '..'", "Fix:"]),
    "name_long": override(
        "experiment.name=" + "a" * 300, expect=["experiment.name", "300 bytes long (at most 200)"]
    ),
    "seed_huge": override(
        f"runtime.seed={2**70}", expect=[f"runtime.seed = {2**70}", "0 <= seed <= 2**32-1"]
    ),
    "seed_negative": override("data_sampling.seed=-1", expect="data_sampling.seed = -1"),
    "max_length_huge": override(
        "dataset.max_length=1000000000000", expect="dataset.max_length = 1000000000000"
    ),
    "max_length_context": _with(
        _short_context_model,
        expect=["dataset.max_length = 64", "max_seq_len 32", "dataset.max_length=32"],
    ),
    "validation_is_train": _with(
        lambda e: f"dataset.validation={_train_path(e)}",
        expect=["dataset.validation", "is the training file"],
    ),
    "save_dir_under_file": _with(
        lambda e: f"checkpoint.save_dir={e.config}/run",
        expect=["checkpoint.save_dir", "{config} is a file, not a directory"],
    ),
    # checked before training starts, not at the final save
    "train_save_dir_under_file": _with(
        lambda e: f"checkpoint.save_dir={e.config}/run",
        cmd="train",
        expect=["checkpoint.save_dir", "is a file, not a directory"],
    ),
    "yaml_duplicate_key": config_file(
        "dup.yaml",
        lambda e: e.config.read_text() + "experiment:\n  name: again\n",
        ["{file}:", "duplicate key 'experiment' (first at line"],
    ),
    "yaml_duplicate_nested": config_file(
        "dup2.yaml",
        lambda e: "training:\n  batch_size: 2\n  batch_size: 4\n",
        ["{file}:3: duplicate key 'batch_size' (first at line 2)"],
    ),
    "yaml_alias_bomb": config_file("bomb.yaml", lambda e: _BOMB, ["{file}: expands to"]),
    "yaml_recursive_alias": config_file(
        "rec.yaml", lambda e: "a: &x [*x]\n", ["{file}:1: a recursive YAML alias"]
    ),
    "yaml_too_big": config_file(
        "big.yaml", lambda e: "# " + "x" * (2 << 20) + "\n", ["{file}:", "more than a config"]
    ),
}

CORPUS: dict[str, Case] = {
    **{f"override-{k}": v for k, v in CONFIG_OVERRIDES.items()},
    **{f"file-{k}": v for k, v in CONFIG_FILES.items()},
    **{f"data-{k}": v for k, v in DATA.items()},
    **{f"train-{k}": v for k, v in TRAINING.items()},
    **{f"checkpoint-{k}": v for k, v in CHECKPOINTS.items()},
    **{f"input-{k}": v for k, v in INPUTS.items()},
}


def test_corpus_size() -> None:
    assert len(CORPUS) >= 60


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_malformed_input_exits_2_naming_it(name: str, env: Env, capsys) -> None:
    argv, expected = CORPUS[name](env)
    code = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    assert code == 2, out.err
    for text in expected:
        assert text in out.err, f"{text!r} not in:\n{out.err}"


ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["-m", "weighted_mtp", "validate-config", "--config", "{config}",
          "--override", "+training.batch_sz=4"], "training.batch_sz"),
        (["-m", "weighted_mtp", "checkpoint", "verify", "{flipped}"], "corrupted"),
        (["-m", "weighted_mtp.cli", "+training.batch_sz=4", "{paths}"], "training.batch_sz"),
        (["-m", "weighted_mtp.cli", "stage=verifiable",
          "data_sampling.curriculum_schedule[9].epoch_range=[0.0,0.5]"], "[9] is out of range"),
    ],
)  # fmt: skip
def test_end_to_end_exit_code(argv: list[str], expect: str, env: Env, micro_storage) -> None:
    flipped = env.ckpt_copy("sub")
    flip(flipped / "weights.safetensors")
    subs = {"{config}": str(env.config), "{flipped}": str(flipped)}
    args: list[str] = []
    for a in argv:
        if a == "{paths}":
            args += storage_overrides(micro_storage)
        else:
            args.append(subs.get(a, a))
    res = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=ENV, cwd=env.root, timeout=300
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert expect in res.stderr and "Traceback" not in res.stderr
