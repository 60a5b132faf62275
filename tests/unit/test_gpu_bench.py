"""benchmarks/gpu.py: rank 0 of an N-GPU run measured for real on one device with torch's
fake process group (here its CPU smoke mode), against the plan of the same rank."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_world_2_smoke_on_cpu(gpu, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--small", "--world", "2", "--steps", "1"]
    assert gpu.main([*argv, "--stages", "baseline", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["world"] == 2 and report["cuda_alloc"]["runtime.cuda_alloc_conf"]
    (row,) = report["rows"]
    assert row["sharded"]  # FSDP2 over the fake group of 2: rank 0 holds half
    for key in ("planned_gb", "tracked_gb", "step_s", "tokens_per_s", "tflops"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["flops_per_step"] > 0
    assert 0.8 < row["planned/tracked"] < 1.25, row["planned/tracked"]
    assert "rank 0 of 2" in capsys.readouterr().out


def test_profiles_and_overrides_pass_through(gpu) -> None:  # noqa: ANN001
    a = gpu._parser().parse_args(
        [
            "--profile",
            "vessl_a100_40gb",
            "--world",
            "4",
            "--overrides",
            "training.max_grad_norm=0.5",
        ]
    )
    cfg = gpu.config(a, "verifiable")
    assert cfg.training.batch_size == 2 and cfg.training.gradient_accumulation_steps == 8
    assert cfg.dataset.max_length == 2048 and cfg.runtime.distributed == "fsdp"
    assert cfg.training.max_grad_norm == 0.5
    args, ref = gpu.model_shapes(a)
    assert (args.dim, args.n_layers, args.vocab_size) == (4096, 32, 32000)
    assert ref["hidden_size"] == 2560  # Sheared-LLaMA-2.7B


def test_datasheet_peak_by_device_name(gpu) -> None:  # noqa: ANN001
    assert gpu.datasheet_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu.datasheet_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu.datasheet_tflops("NVIDIA H200") == 989
    assert math.isnan(gpu.datasheet_tflops("cpu"))
