"""The ``wmtp`` entrypoint: one ``@hydra.main`` over the conf/ tree.

``wmtp stage=verifiable training.beta=0.8`` composes and runs; ``wmtp -m ...`` sweeps
(outputs under ``multirun/``); ``wmtp --cfg job`` prints the composed config;
``wmtp --help`` lists the config groups. Seed-style list keys (``a.b[0].c=v``) are
accepted and translated. User errors (bad override, unknown key, wrong type,
failed validation) exit with code 2 and no traceback.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from weighted_mtp import app
from weighted_mtp.config import overrides as ov
from weighted_mtp.config.schema import register_schema, structured
from weighted_mtp.config.validate import CONF_DIR
from weighted_mtp.errors import USER_ERROR_EXIT_CODE, UserError

_task_started = False
# Hydra flags whose value is the next argument (so that argument is not an override).
_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "-i",
    "--experimental-rerun",
}


def _translate_argv(argv: list[str]) -> list[str]:
    """Translate seed-style overrides in ``argv``; a bare word must be ``key=value``."""
    out: list[str] = []
    takes_value = False
    for arg in argv:
        if takes_value or arg.startswith("-"):
            out.append(arg)
            takes_value = arg in _FLAGS_WITH_VALUE
            continue
        out.append(ov.translate(arg))  # raises OverrideError unless key=value
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> object:
    global _task_started
    _task_started = True
    try:
        return app.run(structured(cfg), source=" ".join(["wmtp", *sys.argv[1:]]))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)


def main() -> None:
    register_schema()
    try:
        args = _translate_argv(sys.argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)
    sys.argv = [sys.argv[0], *args]
    try:
        _hydra_main()
    except SystemExit as exc:
        # Hydra exits 1 for composition errors (unknown key, wrong type, bad override):
        # those are user errors, raised before the task function starts.
        if exc.code == 1 and not _task_started:
            sys.exit(USER_ERROR_EXIT_CODE)
        raise


if __name__ == "__main__":
    main()
