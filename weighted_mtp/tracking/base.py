"""The tracker interface the training loop and evaluation call, and the tracker that
drops everything (MLflow off, or any rank but 0)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """What the training loop may call; implementations never raise."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None: ...

    def log_dict(self, obj: Any, filename: str) -> None: ...

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

    def finish(self, status: str = "FINISHED") -> None:
        """Nothing to close."""

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")
