"""User-facing errors: reported as a message (no traceback), exit code 2."""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """Bad input from the user (config, override, path, data file).

    The message must name what is wrong (field, file, line) and how to fix it.
    Command-line entrypoints print it without a traceback and exit with code 2.
    """


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
