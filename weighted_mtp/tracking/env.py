"""MLflow's environment: no telemetry, short HTTP retries, and where a run is stored."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

#: No telemetry: mlflow 3.x reads MLFLOW_DISABLE_TELEMETRY, and DO_NOT_TRACK == "true"
#: (only the string "true" counts there, "1" does not). weighted_mtp/__init__.py sets
#: them at package import, before anything can import mlflow.
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


def configure_mlflow_env() -> None:
    """Set telemetry opt-outs and short HTTP retries/timeouts unless already set."""
    for key, value in {**TELEMETRY_ENV_DEFAULTS, **HTTP_ENV_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    if "mlflow.telemetry" in sys.modules:  # imported before the opt-out: drop its client
        with contextlib.suppress(Exception):
            from mlflow.telemetry import set_telemetry_client

            set_telemetry_client()


def normalize_tracking_uri(uri: str) -> str:
    """Return ``uri`` with a plain local path turned into an absolute ``file:`` URI.

    mlflow 3.x only opens its file store with ``MLFLOW_ALLOW_FILE_STORE=true``, which the
    tracker sets then unless already set; prefer ``sqlite:///path/mlflow.db``.
    """
    uri = uri.strip()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", uri) and not re.match(r"^[A-Za-z]:[\\/]", uri):
        return uri
    return Path(uri).expanduser().resolve().as_uri()
