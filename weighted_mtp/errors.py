"""User-facing errors: reported as a message (no traceback), exit code 2."""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """Bad input from the user (config, override, path, data file).

    The message must name what is wrong (field, file, line) and how to fix it.
    Command-line entrypoints print it without a traceback and exit with code 2.
    """
