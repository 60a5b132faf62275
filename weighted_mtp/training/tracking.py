"""Experiment tracking behind one small interface: MLflow, or nothing.

``create_tracker(cfg, rank)`` returns a :class:`NullTracker` when
``mlflow.tracking_uri`` is ``""`` (the seed's rule) or on any rank but 0, and an
:class:`MlflowTracker` otherwise. The MLflow tracker talks to the store through an
explicit :class:`mlflow.MlflowClient` and run id (never the fluent global API), so
several trackers can live in one process.

Config -> MLflow mapping:

* ``mlflow.experiment`` -> experiment name (``"weighted-mtp"`` when empty);
* ``mlflow.s3_artifacts`` -> artifact location ``<s3_artifacts>/<experiment>`` given to a
  *newly created* experiment (an existing experiment keeps its own location);
  boto3 honours ``MLFLOW_S3_ENDPOINT_URL`` and the usual ``AWS_*`` variables;
* ``experiment.name`` -> run name;
* ``experiment.stage`` -> tag ``stage``; ``experiment.description`` -> tag
  ``mlflow.note.content`` (the UI's description field);
* ``experiment.tags`` (list of strings) -> one tag per item, ``{item: "true"}`` (key
  sanitised to MLflow's allowed characters), so runs filter as ``tags.<item> = 'true'``;
  plus tag ``tags`` holding the items joined with ``", "`` verbatim;
* a plain local path -> an absolute ``file:`` URI (mlflow's file store; mlflow 3.x only
  opens it with ``MLFLOW_ALLOW_FILE_STORE=true``, which is set then unless already set;
  prefer ``sqlite:///path/mlflow.db``);
* the resolved config -> params with dotted keys, lists/dicts as JSON, values cut to 500
  characters, sent 100 per call; and the whole config, uncut, as artifact ``config.yaml``.

Robustness: tracking must never stop training. Every call catches its errors. A request
the store rejects (4xx: a changed param value, a bad key) is warned about once per kind
of call and tracking goes on; any other failure (server down at start, server gone
mid-run) logs one ``logging.warning`` and turns every later call into a no-op. To keep that first
failure short, the MLflow HTTP client's retry/timeout environment variables get small
defaults (only where the user has not set them; see ``HTTP_ENV_DEFAULTS``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from omegaconf import DictConfig, ListConfig, OmegaConf

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "weighted-mtp"
PARAM_VALUE_MAX = 500  # MLflow < 2.x servers reject longer values; newer allow 6000
PARAMS_PER_BATCH = 100  # MLflow's limit of params (and tags) per log_batch call
METRICS_PER_BATCH = 1000  # MLflow's limit of metrics per log_batch call
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
CONFIG_ARTIFACT = "config.yaml"

#: No telemetry: mlflow 3.x reads MLFLOW_DISABLE_TELEMETRY, and DO_NOT_TRACK == "true"
#: (only the string "true" counts there, "1" does not).
TELEMETRY_ENV_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
#: A dead server costs at most ~2.5 s once (refused x3, sleeps 0 + 2 s + jitter);
#: a hung one at most 3 x the timeout. Raise MLFLOW_HTTP_REQUEST_TIMEOUT yourself for
#: multi-GB artifacts proxied through a slow server.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

#: mlflow >= 3.x raises on a file store (``./mlruns``, ``file:``) unless this is true.
FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"

_BAD_KEY_CHARS = re.compile(r"[^\w.\- :/]")

# (weighted_mtp/__init__.py already set TELEMETRY_ENV_DEFAULTS at package import.)


@runtime_checkable
class Tracker(Protocol):
    """What the training loop may call; implementations never raise."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None: ...

    def log_dict(self, obj: Any, filename: str) -> None: ...

    def log_text(self, text: str, filename: str) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...

    def __enter__(self) -> Tracker: ...

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None: ...


class NullTracker:
    """Tracker that drops everything (MLflow disabled, or a non-zero rank)."""

    active = False
    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Drop ``params``."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Drop ``metrics``."""

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """Drop the artifact."""

    def log_dict(self, obj: Any, filename: str) -> None:
        """Drop ``obj``."""

    def log_text(self, text: str, filename: str) -> None:
        """Drop ``text``."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Drop ``tags``."""

    def finish(self, status: str = "FINISHED") -> None:
        """Nothing to close."""

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")


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
                tags={k: _tag_value(v) for k, v in (tags or {}).items()},
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

        items = [Param(_clean_key(k), _param_value(v)) for k, v in params.items()]
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
            items.append(Metric(_clean_key(key), number, now, int(step)))
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

    def log_text(self, text: str, filename: str) -> None:
        """Store ``text`` as the artifact ``filename``."""
        self._call("log text", self._run_call, "log_text", text, filename)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified), 100 per call."""
        from mlflow.entities import RunTag

        items = [RunTag(_clean_key(k), _tag_value(v)) for k, v in tags.items()]
        for chunk in _chunks(items, PARAMS_PER_BATCH):
            if not self._call("set tags", self._batch, tags=chunk):
                return

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


def create_tracker(cfg: DictConfig, rank: int = 0) -> Tracker:
    """Build the tracker that ``cfg.mlflow`` asks for; only rank 0 gets a real one."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    mlflow_cfg = cfg.get("mlflow") or {}
    uri = str(mlflow_cfg.get("tracking_uri") or "").strip()
    if rank != 0 or not uri:
        return NullTracker()
    experiment = str(mlflow_cfg.get("experiment") or "").strip() or DEFAULT_EXPERIMENT
    s3 = str(mlflow_cfg.get("s3_artifacts") or "").strip().rstrip("/")
    exp_cfg = cfg.get("experiment") or {}
    tracker = MlflowTracker(
        uri,
        experiment=experiment,
        run_name=_safe_str(exp_cfg, "name") or None,
        tags=run_tags(cfg),
        artifact_location=f"{s3}/{experiment}" if s3 else None,
    )
    tracker.log_params(flatten_config(cfg))
    tracker.log_dict(_plain(cfg), CONFIG_ARTIFACT)  # the whole config, values uncut
    return tracker


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags for a run from ``cfg.experiment`` (see the module docstring)."""
    exp_cfg = cfg.get("experiment") or {}
    items = [str(t) for t in (_safe_get(exp_cfg, "tags") or [])]
    tags: dict[str, str] = {}
    for item in items:
        key = _clean_key(item)
        if key:
            tags[key] = "true"
    if items:
        tags["tags"] = ", ".join(items)
    stage = _safe_str(exp_cfg, "stage")
    if stage:
        tags["stage"] = stage
    description = _safe_str(exp_cfg, "description")
    if description:
        tags["mlflow.note.content"] = description
    return tags


def flatten_config(cfg: DictConfig | Mapping[str, Any]) -> dict[str, str]:
    """Flatten a (resolved when possible) config to ``{"a.b.c": "value"}`` params."""
    data = _plain(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    return dict(_flatten(data, ""))


def normalize_tracking_uri(uri: str) -> str:
    """Return ``uri`` with a plain local path turned into an absolute ``file:`` URI."""
    uri = uri.strip()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def configure_mlflow_env() -> None:
    """Set telemetry opt-outs and short HTTP retries/timeouts unless already set."""
    for key, value in {**TELEMETRY_ENV_DEFAULTS, **HTTP_ENV_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    if "mlflow.telemetry" in sys.modules:  # imported before the opt-out: drop its client
        with contextlib.suppress(Exception):
            from mlflow.telemetry import set_telemetry_client

            set_telemetry_client()


# -- helpers -----------------------------------------------------------------------------


def _plain(node: DictConfig) -> dict[str, Any]:
    """``node`` as plain data, resolving each value that resolves; others stay as written
    (``???`` for a missing value, ``${...}`` for a broken interpolation)."""
    raw = OmegaConf.to_container(node, resolve=False)
    assert isinstance(raw, dict)
    out: dict[str, Any] = {}
    for key in node:
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 - missing value or unresolvable interpolation
            out[str(key)] = raw[key]
            continue
        if isinstance(value, DictConfig):
            out[str(key)] = _plain(value)
        elif isinstance(value, ListConfig):
            try:
                out[str(key)] = OmegaConf.to_container(value, resolve=True)
            except Exception:  # noqa: BLE001
                out[str(key)] = raw[key]
        else:
            out[str(key)] = value
    return out


def _flatten(data: Any, prefix: str) -> Iterator[tuple[str, str]]:
    if isinstance(data, Mapping):
        if not data and prefix:
            yield prefix, "{}"
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, _param_value(data)


def _param_value(value: Any) -> str:
    text = str(value)
    if isinstance(value, (list, tuple, dict)):
        with contextlib.suppress(TypeError, ValueError):
            text = json.dumps(value, default=str)
    return text if len(text) <= PARAM_VALUE_MAX else text[: PARAM_VALUE_MAX - 3] + "..."


def _tag_value(value: Any) -> str:
    return str(value)


def _clean_key(key: Any) -> str:
    """Map ``key`` onto MLflow's key rules: ``[\\w.\\- :/]`` only, no empty/``.``/``..``
    path parts, at most 250 characters."""
    text = _BAD_KEY_CHARS.sub("_", str(key)).strip()
    parts = [part for part in text.split("/") if part not in ("", ".", "..")]
    return "/".join(parts)[:250]


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


def _safe_get(node: Any, key: str) -> Any:
    try:
        return node.get(key)
    except Exception:  # noqa: BLE001 - a MISSING or broken value reads as absent
        return None


def _safe_str(node: Any, key: str) -> str:
    value = _safe_get(node, key)
    return "" if value is None else str(value).strip()


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = [
    "DEFAULT_EXPERIMENT",
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "configure_mlflow_env",
    "create_tracker",
    "flatten_config",
    "normalize_tracking_uri",
    "run_tags",
]
