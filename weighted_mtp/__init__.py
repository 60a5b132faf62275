"""weighted_mtp: multi-token prediction fine-tuning with per-token loss weighting."""

import os

__version__ = "0.1.0"

# No outbound telemetry: MLflow starts its telemetry client when it is first imported,
# so opt out before any of our modules (or a user's) can import it. mlflow 3.x reads
# MLFLOW_DISABLE_TELEMETRY and DO_NOT_TRACK (only the string "true" counts).
for _key in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
    os.environ.setdefault(_key, "true")
