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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> object:
    global _task_started
    _task_started = True
    try:
        return app.run(structured(cfg), source="wmtp " + " ".join(sys.argv[1:]))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)


def main() -> None:
    register_schema()
    try:
        args = [ov.translate(a) if ov.looks_like_override(a) else a for a in sys.argv[1:]]
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
