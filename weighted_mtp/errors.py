"""The errors an entry point reports without a traceback, and the one handler that does.

A :class:`UserError` (bad input) exits with code 2, a :class:`TrainingDiverged` run with
code 1; both print ``error: <message>`` on stderr. Any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERROR_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 1

# The command line in use, so a fix reads in its syntax: "seed" (python -m weighted_mtp,
# ``--override key=value``) or "hydra" (wmtp, wmtp-eval, wmtp-plan: ``key=value``).
_CLI = {"style": "seed"}


def set_cli(style: str) -> None:
    """Say which command line is running (``seed`` or ``hydra``); entry points call it."""
    _CLI["style"] = style


def cli_style() -> str:
    return _CLI["style"]


def fix(*assignments: str) -> str:
    """``key=value`` assignments as the running command line takes them: ``wmtp``'s
    ``a=1 b=2`` or the seed's ``--override a=1 --override b=2``."""
    if _CLI["style"] == "hydra":
        return " ".join(assignments)
    return " ".join(f"--override {a}" for a in assignments)


def in_cli_syntax(message: str) -> str:
    """``message`` with its seed-form fixes (``--override key=value``) in the running
    command line's syntax."""
    if _CLI["style"] == "hydra":
        return message.replace("--override ", "")
    return message


class UserError(Exception):
    """Bad input from the user (config, override, path, data file).

    The message must name what is wrong (field, file, line) and how to fix it.
    Command-line entrypoints print it without a traceback and exit with code 2.
    """


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stops, checkpoints stay as they were."""


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError behind ``exc`` (itself, or the cause of a wrapper such as Hydra's
    InstantiationException around a constructor's UserError), else None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, UserError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def report(exc: BaseException) -> int | None:
    """Print ``error: <message>`` for an error reported without a traceback and return its
    exit code: a UserError (itself or wrapped) 2, TrainingDiverged 1; None (nothing
    printed) for any other exception."""
    user = user_error_in(exc)
    if user is not None:
        shown, code = user, USER_ERROR_EXIT_CODE
    elif isinstance(exc, TrainingDiverged):
        shown, code = exc, DIVERGED_EXIT_CODE
    else:
        return None
    print(f"error: {in_cli_syntax(str(shown))}", file=sys.stderr, flush=True)
    return code


def run_reported(body: Callable[[], int]) -> int:
    """Run an entry point's ``body``; an error :func:`report` knows becomes its exit code."""
    try:
        return body()
    except Exception as exc:
        code = report(exc)
        if code is None:
            raise
        return code
