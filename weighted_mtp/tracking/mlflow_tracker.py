"""One MLflow run that never stops training.

The tracker talks to the store through an explicit :class:`mlflow.MlflowClient` and run
id (never the fluent global API), so several trackers can live in one process.

Robustness: every call catches its errors. A request the store rejects (4xx: a changed
param value, a bad key) is warned about once per kind of call and tracking goes on; any
other failure (server down at start, server gone mid-run) logs one ``logging.warning``
and turns every later call into a no-op. To keep that first failure short, the MLflow
HTTP client's retry/timeout environment variables get small defaults (only where the
user has not set them; see :data:`~weighted_mtp.tracking.env.HTTP_ENV_DEFAULTS`).
Params go 100 per call, metrics 1000 per call (MLflow's batch limits).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from weighted_mtp.tracking.env import FILE_STORE_ENV, configure_mlflow_env, normalize_tracking_uri
from weighted_mtp.tracking.params import clean_key, param_value

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "weighted-mtp"
PARAMS_PER_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call
METRICS_PER_BATCH = 1000  # MLflow's limit of metrics per log_batch call
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


class MlflowTracker:
    """One MLflow run, driven through an explicit client and run id."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        artifact_location: str | None = None,
    ) -> None:
        """Open (get or create) ``experiment`` and start a run in it.

        A store that cannot be reached leaves the tracker inactive with one warning.
        """
        configure_mlflow_env()
        self.tracking_uri = normalize_tracking_uri(tracking_uri)
        if self.tracking_uri.startswith("file:"):
            # mlflow 3.x refuses its file store unless opted in; a path in the config is that
            os.environ.setdefault(FILE_STORE_ENV, "true")
        self.experiment = experiment or DEFAULT_EXPERIMENT
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._disabled = False
        self._finished = False
        self._rejected: set[str] = set()
        self._client: MlflowClient | None = None
        try:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            self.experiment_id = self._get_or_create_experiment(artifact_location)
            run = self._client.create_run(
                self.experiment_id,
                run_name=run_name or None,
                tags={k: str(v) for k, v in (tags or {}).items()},
            )
            self.run_id = run.info.run_id
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self._disable("start a run", exc)

    @property
    def active(self) -> bool:
        """True while calls still reach MLflow."""
        return self.run_id is not None and not self._disabled and not self._finished

    @property
    def client(self) -> MlflowClient | None:
        """The underlying client (for reading back; ``None`` if it could not be made)."""
        return self._client

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` (values stringified and cut to 500 chars), 100 per call."""
        from mlflow.entities import Param

        items = [Param(clean_key(k), param_value(v)) for k, v in params.items()]
        for chunk in _chunks(items, PARAMS_PER_BATCH):
            if not self._call("log params", self._batch, params=chunk):
                return

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar ``metrics`` at ``step`` (values that are not numbers are skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for key, value in metrics.items():
            number = _to_float(value)
            if number is None:
                log.debug("tracking: metric %r is not a number (%r), skipped", key, value)
                continue
            items.append(Metric(clean_key(key), number, now, int(step)))
        for chunk in _chunks(items, METRICS_PER_BATCH):
            if not self._call("log metrics", self._batch, metrics=chunk):
                return

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Upload a file or a directory's contents under ``artifact_path``."""
        path = Path(local_path)
        if not path.exists():  # a caller's mistake, not a tracking failure
            self._reject("log an artifact", FileNotFoundError(f"no such file: {path}"))
            return
        if path.is_dir():
            self._call("log artifacts", self._run_call, "log_artifacts", str(path), artifact_path)
        else:
            self._call("log an artifact", self._run_call, "log_artifact", str(path), artifact_path)

    def log_dict(self, obj: Any, filename: str) -> None:
        """Store ``obj`` as a JSON (``.json``) or YAML (``.yaml``/``.yml``) artifact."""
        if isinstance(obj, DictConfig):
            obj = OmegaConf.to_container(obj, resolve=False)
        self._call("log a dict", self._run_call, "log_dict", obj, filename)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED); later calls are no-ops."""
        if status not in RUN_STATUSES:
            log.warning("tracking: unknown run status %r, using FAILED", status)
            status = "FAILED"
        self._call("end the run", self._run_call, "set_terminated", status)
        self._finished = True

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")

    # -- internals -------------------------------------------------------------------------

    def _get_or_create_experiment(self, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        assert self._client is not None
        found = self._client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                return self._client.create_experiment(
                    self.experiment, artifact_location=artifact_location or None
                )
            except MlflowException as exc:  # created meanwhile by a parallel sweep job
                found = self._client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise exc from None
        if artifact_location and found.artifact_location.rstrip("/") != artifact_location:
            log.warning(
                "tracking: experiment %r already stores artifacts at %s, not %s",
                self.experiment,
                found.artifact_location,
                artifact_location,
            )
        return found.experiment_id

    def _batch(self, **entities: Any) -> None:
        assert self._client is not None and self.run_id is not None
        self._client.log_batch(self.run_id, **entities)

    def _run_call(self, method: str, *args: Any) -> None:
        assert self._client is not None and self.run_id is not None
        getattr(self._client, method)(self.run_id, *args)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
        """Run ``fn`` if active; return whether it succeeded. Never raises."""
        if not self.active:
            return False
        try:
            fn(*args, **kwargs)
            return True
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            if _is_rejected_request(exc):
                self._reject(what, exc)
            else:
                self._disable(what, exc)
            return False

    def _reject(self, what: str, exc: BaseException) -> None:
        """Warn once per kind of call about a request that cannot succeed; keep tracking."""
        if self.active and what not in self._rejected:
            self._rejected.add(what)
            log.warning("tracking: could not %s: %s", what, _short(exc))

    def _disable(self, what: str, exc: BaseException) -> None:
        if not self._disabled:
            log.warning(
                "tracking: could not %s at %s (%s: %s); MLflow tracking is off for the "
                "rest of this run, training goes on",
                what,
                self.tracking_uri,
                type(exc).__name__,
                _short(exc),
            )
        self._disabled = True


# -- helpers -----------------------------------------------------------------------------


def _to_float(value: Any) -> float | None:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _is_rejected_request(exc: BaseException) -> bool:
    """A 4xx answer from a live store (bad value, duplicate param): keep tracking."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False
    try:
        return 400 <= exc.get_http_status_code() < 500
    except Exception:  # noqa: BLE001
        return False


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."
