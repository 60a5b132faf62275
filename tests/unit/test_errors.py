"""The one entry-point error handler: message on stderr, exit code, no traceback."""

from __future__ import annotations

import pytest

from weighted_mtp.errors import TrainingDiverged, UserError, run_reported


def _raise(exc: BaseException):
    def body() -> int:
        raise exc

    return body


def _wrapped() -> int:
    try:
        raise UserError("weighting.beta = -1: must be > 0")
    except UserError as exc:  # as Hydra's instantiate wraps a constructor's error
        raise RuntimeError("Error in call to target") from exc


def test_user_errors_exit_2_diverged_1_each_with_one_message(capsys) -> None:
    assert run_reported(lambda: 0) == 0
    assert run_reported(_raise(UserError("dataset.train: no such file"))) == 2
    assert capsys.readouterr().err == "error: dataset.train: no such file\n"
    assert run_reported(_wrapped) == 2
    assert capsys.readouterr().err == "error: weighting.beta = -1: must be > 0\n"
    assert run_reported(_raise(TrainingDiverged("loss is nan at step 3"))) == 1
    assert capsys.readouterr().err == "error: loss is nan at step 3\n"


def test_other_errors_keep_their_traceback(capsys) -> None:
    with pytest.raises(KeyError):
        run_reported(_raise(KeyError("bug")))
    assert capsys.readouterr().err == ""
