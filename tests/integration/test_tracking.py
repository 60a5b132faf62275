"""MLflow tracking against real stores: an HTTP server, sqlite, a local path, S3 (moto)."""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.servers import (
    OFFLINE_ENV,
    ServerProcess,
    free_port,
    start_mlflow_server,
    start_moto_server,
)
from weighted_mtp.config.schema import structured
from weighted_mtp.tracking import create_tracker
from weighted_mtp.tracking.base import NullTracker, Tracker
from weighted_mtp.tracking.env import FILE_STORE_ENV, HTTP_ENV_DEFAULTS
from weighted_mtp.tracking.mlflow_tracker import DEFAULT_EXPERIMENT, MlflowTracker
from weighted_mtp.tracking.params import PARAM_VALUE_MAX

if TYPE_CHECKING:
    from mlflow import MlflowClient

LOGGER = "weighted_mtp.tracking.mlflow_tracker"


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No telemetry, no proxies for 127.0.0.1; undo the tracker's env defaults afterwards."""
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for key in [
        *HTTP_ENV_DEFAULTS,
        FILE_STORE_ENV,
    ]:  # setenv + delenv: restored to "unset" on teardown
        monkeypatch.setenv(key, "0")
        monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


def read_client(uri: str) -> MlflowClient:
    """A separate MlflowClient to read what a tracker wrote (mlflow imported lazily, after
    the telemetry opt-out is in the environment)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def make_cfg(uri: str, run: str = "run-1", **mlflow: Any) -> Any:
    return structured(
        {
            "experiment": {
                "name": run,
                "stage": "verifiable",
                "description": "tracking test",
                "tags": ["smoke", "mtp/4"],
            },
            "training": {"n_epochs": 0.5, "batch_size": 2, "learning_rate": 1e-5, "beta": 0.9},
            "mlflow": {"tracking_uri": uri, **mlflow},
        }
    )


def log_some(tracker: Tracker, tmp_path: Path) -> None:
    """The calls a training loop makes: metrics per step, artifacts, then finish."""
    for step in (1, 2, 3):
        tracker.log_metrics({"train/loss": 2.0 / step, "lr": 1e-5}, step=step)
    report = tmp_path / "report.txt"
    report.write_text("hello")
    tracker.log_artifact(report)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "meta.json").write_text("{}")
    tracker.log_artifact(ckpt, artifact_path="checkpoints/step-3")
    tracker.log_dict({"a": 1, "b": [1, 2]}, "config/resolved.yaml")


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """All artifact file paths of a run, recursively."""
    found: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            found |= artifact_paths(client, run_id, info.path)
        else:
            found.add(info.path)
    return found


def check_run(client: MlflowClient, tracker: MlflowTracker, run_name: str = "run-1") -> None:
    assert tracker.run_id is not None
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == run_name
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["experiment.stage"] == "verifiable"
    assert params["training.learning_rate"] == "1e-05"
    assert params["training.beta"] == "0.9"
    assert params["data_sampling.difficulty_bins.low"] == "[1, 3]"
    assert params["experiment.tags"] == '["smoke", "mtp/4"]'
    assert params["checkpoint.save_dir"] == f"storage/checkpoints/verifiable/{run_name}"
    tags = run.data.tags
    assert tags["stage"] == "verifiable"
    assert tags["mlflow.note.content"] == "tracking test"
    assert tags["smoke"] == "true" and tags["mtp/4"] == "true"
    assert tags["tags"] == "smoke, mtp/4"
    history = client.get_metric_history(tracker.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, 2.0 / 3)]
    assert artifact_paths(client, tracker.run_id) == {
        "config.yaml",
        "report.txt",
        "checkpoints/step-3/meta.json",
        "config/resolved.yaml",
    }


def test_null_tracker_when_disabled_or_not_rank_zero(tmp_path: Path) -> None:
    tracker = create_tracker(make_cfg(""))
    assert isinstance(tracker, NullTracker) and isinstance(tracker, Tracker)
    log_some(tracker, tmp_path)
    tracker.finish()
    store = tmp_path / "store"
    assert isinstance(create_tracker(make_cfg(str(store)), rank=1), NullTracker)
    assert not store.exists()


def test_mlflow_telemetry_is_off() -> None:
    from mlflow.telemetry.client import get_telemetry_client

    assert get_telemetry_client() is None


def test_http_server_run_round_trip(mlflow_server: ServerProcess, tmp_path: Path) -> None:
    cfg = make_cfg(mlflow_server.url, experiment="wmtp-http")
    first = create_tracker(cfg)
    second = create_tracker(make_cfg(mlflow_server.url, run="run-2", experiment="wmtp-http"))
    assert isinstance(first, MlflowTracker) and isinstance(second, MlflowTracker)
    assert first.active and second.active and first.run_id != second.run_id
    many = {f"extra.p{i:03d}": "x" * (PARAM_VALUE_MAX + 50 if i == 0 else 3) for i in range(250)}
    first.log_params(many)  # 3 batches of <= 100
    second.log_metrics({"train/loss": 9.0}, step=7)  # interleaved with the first run
    second.log_metrics({"grad_norm": float("nan"), "skipped": "n/a"}, step=7)
    log_some(first, tmp_path)
    first.finish()
    second.finish("FAILED")

    client = read_client(mlflow_server.url)
    check_run(client, first)
    params = client.get_run(first.run_id).data.params
    assert sum(k.startswith("extra.") for k in params) == 250
    assert len(params["extra.p000"]) == PARAM_VALUE_MAX
    other = client.get_run(second.run_id)
    assert other.info.status == "FAILED" and other.info.run_name == "run-2"
    assert [m.step for m in client.get_metric_history(second.run_id, "train/loss")] == [7]
    assert "lr" not in other.data.metrics and "skipped" not in other.data.metrics
    assert math.isnan(other.data.metrics["grad_norm"])
    exp = client.get_experiment_by_name("wmtp-http")
    assert exp is not None and exp.experiment_id == other.info.experiment_id
    assert exp.artifact_location.startswith("mlflow-artifacts:")


def test_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # sqlite's default artifact root is ./mlruns
    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    tracker = create_tracker(make_cfg(uri))
    assert isinstance(tracker, MlflowTracker) and tracker.active
    log_some(tracker, tmp_path)
    tracker.log_params({"experiment.stage": "critic"})  # rejected (params are immutable) ...
    tracker.log_artifact(tmp_path / "no-such-file.txt")  # a caller's mistake, same
    assert tracker.active  # ... but a rejected request does not switch tracking off
    tracker.finish()
    client = read_client(uri)
    check_run(client, tracker)
    assert client.get_experiment_by_name(DEFAULT_EXPERIMENT) is not None

    with pytest.raises(RuntimeError), create_tracker(make_cfg(uri, run="crash")) as crashed:
        raise RuntimeError("boom")
    assert client.get_run(crashed.run_id).info.status == "FAILED"


@pytest.mark.parametrize("form", ["path", "file-uri"])
def test_local_path_store(tmp_path: Path, form: str) -> None:
    store = tmp_path / "mlruns"
    uri = str(store) if form == "path" else store.as_uri()
    tracker = create_tracker(make_cfg(uri, experiment="wmtp-local"))
    assert isinstance(tracker, MlflowTracker) and tracker.active
    log_some(tracker, tmp_path)
    tracker.finish()
    check_run(read_client(store.as_uri()), tracker)
    assert store.is_dir()


def test_s3_artifacts_with_moto(
    mlflow_server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    moto = start_moto_server(tmp_path / "moto")
    try:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "MLFLOW_S3_ENDPOINT_URL": moto.url,
        }.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        s3.create_bucket(Bucket="wmtp-artifacts")

        cfg = make_cfg(
            mlflow_server.url, experiment="wmtp-s3", s3_artifacts="s3://wmtp-artifacts/mlflow/"
        )
        tracker = create_tracker(cfg)
        assert isinstance(tracker, MlflowTracker) and tracker.active
        log_some(tracker, tmp_path)
        tracker.finish()

        client = read_client(mlflow_server.url)
        exp = client.get_experiment_by_name("wmtp-s3")
        assert exp is not None and exp.artifact_location == "s3://wmtp-artifacts/mlflow/wmtp-s3"
        check_run(client, tracker)  # lists the artifacts through MLflow's S3 repository
        listed = s3.list_objects_v2(Bucket="wmtp-artifacts", Prefix="mlflow/wmtp-s3/")
        keys = {obj["Key"] for obj in listed.get("Contents", [])}
        prefix = f"mlflow/wmtp-s3/{tracker.run_id}/artifacts/"
        assert f"{prefix}report.txt" in keys
        assert f"{prefix}checkpoints/step-3/meta.json" in keys
    finally:
        moto.stop()


def warnings_from_tracker(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def hammer(tracker: Tracker, tmp_path: Path) -> None:
    """Every kind of call, many times, as a training loop would keep making them."""
    for step in range(20):
        tracker.log_metrics({"train/loss": 1.0}, step=step)
    tracker.log_params({"late": 1})
    log_some(tracker, tmp_path)
    tracker.finish("FAILED")


def test_server_killed_mid_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    server = start_mlflow_server(tmp_path / "doomed")
    try:
        tracker = create_tracker(make_cfg(server.url))
        assert isinstance(tracker, MlflowTracker) and tracker.active
        tracker.log_metrics({"train/loss": 1.0}, step=0)
        os.killpg(server.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        start = time.monotonic()
        hammer(tracker, tmp_path)
        elapsed = time.monotonic() - start
    finally:
        server.stop()
    assert elapsed < 6.0, f"calls after the server died took {elapsed:.1f} s"
    assert not tracker.active
    assert len(warnings_from_tracker(caplog)) == 1


def test_dead_port_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    start = time.monotonic()
    tracker = create_tracker(make_cfg(f"http://127.0.0.1:{free_port()}"))
    hammer(tracker, tmp_path)
    elapsed = time.monotonic() - start
    assert isinstance(tracker, MlflowTracker) and not tracker.active and tracker.run_id is None
    assert elapsed < 6.0, f"a dead server cost {elapsed:.1f} s"
    records = warnings_from_tracker(caplog)
    assert len(records) == 1 and "training goes on" in records[0].getMessage()
