"""Every entry point sets PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True before CUDA
initialises, keeps a user's value, and the run's parameters record which."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weighted_mtp import cuda_alloc
from weighted_mtp.tracking.params import flatten_config, runtime_params

ROOT = Path(__file__).resolve().parents[2]
# what the console scripts / `python -m` run, each with --help (exits after argument parsing)
ENTRIES = {
    "wmtp": ("weighted_mtp.cli", "main", ["--help"]),
    "wmtp-eval": ("weighted_mtp.cli", "evaluate_main", ["--help"]),
    "wmtp-plan": ("weighted_mtp.cli", "plan_main", ["--help"]),
    "python -m weighted_mtp": ("weighted_mtp.__main__", "main", ["plan", "--help"]),
}
# run the entry; at exit print the environment and the params tracking would log
DRIVER = """
import atexit, importlib, json, os, sys
def show():
    import torch
    from weighted_mtp.tracking.params import runtime_params
    print("RESULT" + json.dumps({"env": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
          "cuda_initialised": torch.cuda.is_initialized(), "params": runtime_params()}))
atexit.register(show)
module, func, argv = json.loads(sys.argv[1])
sys.argv = ["entry", *argv]
getattr(importlib.import_module(module), func)()
"""


def _start(entry: str, env: dict[str, str]) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if "ALLOC_CONF" not in k}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(ENTRIES[entry])],
        cwd=ROOT,
        env=base | {"PYTHONPATH": str(ROOT)} | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=300)
    line = next((x for x in out.splitlines() if x.startswith("RESULT")), None)
    assert proc.returncode == 0 and line, err[-2000:]
    return json.loads(line.removeprefix("RESULT"))


def test_every_entry_point_sets_expandable_segments() -> None:
    procs = {e: _start(e, {}) for e in ENTRIES}
    for entry, proc in procs.items():
        r = _result(proc)
        assert r["env"] == "expandable_segments:True", entry
        assert not r["cuda_initialised"], entry
        assert r["params"] == {
            "runtime.cuda_alloc_conf": "expandable_segments:True",
            "runtime.cuda_alloc_conf_source": "default",
        }, entry


def test_a_user_value_is_kept() -> None:
    mine = _start("wmtp", {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"})
    generic = _start("python -m weighted_mtp", {"PYTORCH_ALLOC_CONF": "expandable_segments:False"})
    r = _result(mine)
    assert r["env"] == "max_split_size_mb:128"
    assert r["params"]["runtime.cuda_alloc_conf_source"] == "user:PYTORCH_CUDA_ALLOC_CONF"
    r = _result(generic)
    assert r["env"] is None  # not set over the generic variable (it would take precedence)
    assert r["params"] == {
        "runtime.cuda_alloc_conf": "expandable_segments:False",
        "runtime.cuda_alloc_conf_source": "user:PYTORCH_ALLOC_CONF",
    }


def test_configure_and_inheritance() -> None:
    env: dict[str, str] = {}
    s = cuda_alloc.configure(env)
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert (s.source, s.expandable) == ("default", True)
    # a child (torchrun rank, submitit job) inherits the environment: still our default
    assert cuda_alloc.configure(dict(env)).source == "default"
    env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:False"  # changed by the user
    assert cuda_alloc.configure(env) == cuda_alloc.AllocSetting(
        "expandable_segments:False", "user:PYTORCH_CUDA_ALLOC_CONF"
    )
    assert not cuda_alloc.current(env).expandable
    assert cuda_alloc.current({}).params()["runtime.cuda_alloc_conf"] == "none"


def test_run_params_record_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "garbage_collection_threshold:0.8")
    monkeypatch.delenv(cuda_alloc.MARKER, raising=False)
    params = flatten_config({"training": {"batch_size": 4}})
    assert params["training.batch_size"] == "4"
    assert params["runtime.cuda_alloc_conf"] == "garbage_collection_threshold:0.8"
    assert params["runtime.cuda_alloc_conf_source"] == "user:PYTORCH_CUDA_ALLOC_CONF"
    assert "runtime.cuda_alloc_conf" not in flatten_config({"a": 1}, runtime=False)
    assert runtime_params()["runtime.cuda_alloc_conf"] == "garbage_collection_threshold:0.8"
