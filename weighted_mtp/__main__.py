"""The seed's command line: ``python -m weighted_mtp <command> ...``.

Commands:
  train            --config FILE [--override key=value ...]   run the config's stage
  validate-config  --config FILE [--override key=value ...]   check a config, print a summary
  setup / prepare / export / evaluate / checkpoint / compare / plan   see ``--help`` of each

Each command other than train / validate-config lives in its own module (``COMMANDS``),
which exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.

FILE is a flat YAML in the seed's shape: exactly what ``wmtp stage=X profile=Y --cfg job``
prints. User errors exit with code 2 and a message, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from weighted_mtp import cuda_alloc
from weighted_mtp.errors import USER_ERROR_EXIT_CODE, run_reported


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its usage line
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="flat YAML config file")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field: a.b=c, list items a.b[0].c=v (repeatable)",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from weighted_mtp import app
    from weighted_mtp.config.loader import load_flat

    cfg = load_flat(args.config, args.override)
    app.run(cfg, source=args.config)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from weighted_mtp.config.loader import load_flat
    from weighted_mtp.config.validate import summary, validate

    cfg = load_flat(args.config, args.override)
    validate(cfg, source=args.config)
    print(f"✓ Config valid: {args.config}\n{summary(cfg)}")
    return 0


# command name -> module exposing HELP, add_arguments(parser), run(args) -> int
COMMANDS: dict[str, str] = {
    "setup": "weighted_mtp.setup_assets",
    "prepare": "weighted_mtp.data.prepare",
    "export": "weighted_mtp.export",
    "evaluate": "weighted_mtp.evaluation.cli",
    "checkpoint": "weighted_mtp.training.checkpoint.migrate",
    "compare": "weighted_mtp.compare",
    "plan": "weighted_mtp.plan.command",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m weighted_mtp",
        description="weighted_mtp: MTP fine-tuning with per-token loss weighting. "
        "The Hydra entrypoint is `wmtp` (see `wmtp --help`).",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    sub.required = True
    commands: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "train": ("train the config's stage", _cmd_train),
        "validate-config": ("validate a config file and print its summary", _cmd_validate),
    }
    for name, (help_text, handler) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_args(p)
        p.set_defaults(handler=handler)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    cuda_alloc.configure()  # before any command touches CUDA
    args = build_parser().parse_args(argv)
    return run_reported(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
