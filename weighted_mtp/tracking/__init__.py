"""Experiment tracking behind one small interface: MLflow, or nothing.

:func:`create_tracker` builds what ``cfg.mlflow`` asks for: a
:class:`~weighted_mtp.tracking.base.NullTracker` when ``mlflow.tracking_uri`` is ``""``
(the seed's rule) or on any rank but 0, else an
:class:`~weighted_mtp.tracking.mlflow_tracker.MlflowTracker` that has logged the config
as params and as the artifact ``config.yaml``.

Modules: ``base`` (the :class:`Tracker` interface and the null tracker),
``mlflow_tracker`` (one MLflow run that never stops training), ``params`` (config ->
params and tags), ``env`` (MLflow's environment: telemetry, HTTP retries, store URIs).

Config -> MLflow mapping:

* ``mlflow.experiment`` -> experiment name (``"weighted-mtp"`` when empty);
* ``mlflow.s3_artifacts`` -> artifact location ``<s3_artifacts>/<experiment>`` given to a
  *newly created* experiment (an existing experiment keeps its own location);
  boto3 honours ``MLFLOW_S3_ENDPOINT_URL`` and the usual ``AWS_*`` variables;
* ``experiment.name`` -> run name; ``experiment.stage`` / ``description`` / ``tags`` ->
  tags (:func:`~weighted_mtp.tracking.params.run_tags`);
* ``mlflow.tracking_uri``: a plain local path becomes an absolute ``file:`` URI
  (:func:`~weighted_mtp.tracking.env.normalize_tracking_uri`);
* the resolved config -> params with dotted keys
  (:func:`~weighted_mtp.tracking.params.flatten_config`); and the whole config, uncut,
  as artifact ``config.yaml``.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from weighted_mtp.tracking.base import NullTracker, Tracker
from weighted_mtp.tracking.mlflow_tracker import DEFAULT_EXPERIMENT, MlflowTracker
from weighted_mtp.tracking.params import flatten_config, plain_config, run_tags, safe_str

CONFIG_ARTIFACT = "config.yaml"


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
    tracker = MlflowTracker(
        uri,
        experiment=experiment,
        run_name=safe_str(cfg.get("experiment") or {}, "name") or None,
        tags=run_tags(cfg),
        artifact_location=f"{s3}/{experiment}" if s3 else None,
    )
    tracker.log_params(flatten_config(cfg))
    tracker.log_dict(plain_config(cfg), CONFIG_ARTIFACT)  # the whole config, values uncut
    return tracker
