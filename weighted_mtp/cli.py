"""The ``wmtp`` entrypoint: one ``@hydra.main`` over the conf/ tree.

``wmtp stage=verifiable training.beta=0.8`` composes and runs; ``wmtp -m ...`` sweeps
(outputs under ``multirun/``); ``wmtp --cfg job`` prints the composed config;
``wmtp --help`` lists the config groups. Seed-style list keys (``a.b[0].c=v``) are
accepted and translated. User errors (bad override, unknown key, wrong type,
failed validation) exit with code 2 and no traceback.

Every job writes ``result.json`` into its Hydra output dir (see :mod:`weighted_mtp.sweep`).
In a sweep a failing job does not stop the others: it is recorded as ``failed`` and shown
in the sweep summary; ``wmtp -m`` then exits 2 if every failure was a user error, else 1.
``python -m weighted_mtp.cli`` is the same entrypoint (for ``torchrun -m``).
"""

from __future__ import annotations

import logging
import sys
import time

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from weighted_mtp import app, cuda_alloc
from weighted_mtp.config import CONF_DIR
from weighted_mtp.config import overrides as ov
from weighted_mtp.config.schema import register_schema, structured
from weighted_mtp.errors import (
    USER_ERROR_EXIT_CODE,
    UserError,
    report,
    run_reported,
    set_cli,
    user_error_in,
)
from weighted_mtp.sweep.naming import JobInfo, name_job
from weighted_mtp.sweep.results import write_result
from weighted_mtp.sweep.summary import STATE as SWEEP
from weighted_mtp.sweep.summary import write_summary

log = logging.getLogger("weighted_mtp.cli")
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


def _translate_argv(argv: list[str], config_name: str = "config") -> list[str]:
    """Translate seed-style overrides in ``argv``; a bare word must be ``key=value``; a
    list index past the end of its list is named with the list's length."""
    out: list[str] = []
    overrides: list[str] = []
    takes_value = False
    for arg in argv:
        if takes_value or arg.startswith("-"):
            out.append(arg)
            takes_value = arg in _FLAGS_WITH_VALUE
            continue
        out.append(_schema_checked(ov.translate(arg), config_name))  # OverrideError: not k=v
        overrides.append(out[-1])
    _check_modes(argv)
    if config_name == "config":
        _check_list_indexes(overrides)
    return out


def _check_modes(argv: list[str]) -> None:
    """Hydra raises a bare ValueError (a traceback) for ``wmtp -m ... --cfg job``."""
    sweep = any(a in ("-m", "--multirun") for a in argv)
    other = [a for a in argv if a in ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")]
    if sweep and other:
        raise UserError(
            f"-m (a sweep) and {other[0]} cannot be combined: Hydra does one of them. Fix: "
            f"print one job's config with one value per key, e.g. wmtp stage=rho1 "
            f"training.k_percent=0.4 {other[0]} job; or run the sweep without {other[0]}"
        )


def _schema_checked(override: str, config_name: str) -> str:
    """Hydra's own message for ``training.lr=0.1`` suggests ``+training.lr=0.1``, which a
    typed schema refuses too: name the closest field instead. ``~training.x`` (Hydra cannot
    delete a typed field) resets the field to the schema's default."""
    from weighted_mtp.config.schema import EvalRootConfig, WmtpConfig

    root = WmtpConfig if config_name == "config" else EvalRootConfig
    key = override.partition("=")[0]
    bare = key.lstrip("+~")
    if "." not in bare or bare.split(".")[0] in ("hydra", "weighting"):
        return override  # a config group choice, Hydra's own node or the free-form weighting
    if key.startswith("~"):
        return ov.reset_override(bare, root) or override
    if not key.startswith("+"):
        problem = ov.unknown_field(bare, root)
        if problem:
            raise ov.OverrideError(f"{override!r}: {problem}")
    return override


def _check_list_indexes(overrides: list[str]) -> None:
    """Hydra's own message for ``a.b.9.c=v`` past the end of ``a.b`` names a type, not the
    index: compose without those overrides and say how long the list is."""
    key_of = {o: o.partition("=")[0].lstrip("+~") for o in overrides}
    indexed = [o for o, k in key_of.items() if any(p.isdigit() for p in k.split("."))]
    if not indexed:
        return
    from weighted_mtp.config.loader import compose

    try:
        cfg = compose([o for o in overrides if o not in indexed])
    except Exception:  # another problem: Hydra reports it itself
        return
    for o in indexed:
        problem = ov.list_index_problem(cfg, key_of[o])
        if problem:
            raise ov.OverrideError(f"{o!r}: {problem}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> object:
    global _task_started
    cuda_alloc.configure()  # a submitit / Slurm job enters here, not through main()
    _task_started = True
    job = JobInfo.current()
    name_job(cfg, job)
    t0 = time.perf_counter()
    try:
        result = app.run(structured(cfg), source=_source(job))
    except Exception as exc:
        user = user_error_in(exc)  # itself, or e.g. a plugin's wrapped by instantiate
        code = report(exc)
        write_result(cfg, job, error=user or exc, user_error=user is not None, elapsed_s=_since(t0))
        if not job.multirun:
            if code is None:
                raise
            sys.exit(code)
        if code is None:
            log.exception("job %d failed", job.num)
        return None  # shown as failed in the sweep summary; the other jobs go on
    write_result(cfg, job, result, elapsed_s=_since(t0))
    return result


def _source(job: JobInfo) -> str:
    """How messages name this run: the command line, or the sweep job and its overrides."""
    if job.multirun:
        swept = job.swept()
        return f"wmtp -m job {job.num}" + (f" ({swept})" if swept else "")
    return " ".join(["wmtp", *sys.argv[1:]])


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def main() -> None:
    set_cli("hydra")
    cuda_alloc.configure()  # before anything touches CUDA (torchrun ranks start here too)
    register_schema()
    try:
        args = _translate_argv(sys.argv[1:])
    except UserError as exc:
        sys.exit(report(exc))
    sys.argv = [sys.argv[0], *args]
    try:
        _hydra_main()
    except SystemExit as exc:
        # Hydra exits 1 for composition errors (unknown key, wrong type, bad override):
        # those are user errors, raised before any job starts.
        started = _task_started or SWEEP.launched()
        if exc.code == 1 and not started:
            sys.exit(USER_ERROR_EXIT_CODE)
        if exc.code and started and SWEEP.sweep_dir is not None and SWEEP.rows is None:
            write_summary(SWEEP.sweep_dir)  # a job died: summarise what exists
        raise
    _exit_for_sweep(SWEEP.rows)


def _exit_for_sweep(rows: list[dict] | None) -> None:
    """After a sweep: exit 0 if every job is ok, 2 if all failures are user errors, else 1."""
    failed = [r for r in rows or [] if r["status"] != "ok"]
    if not failed:
        return
    print(f"{len(failed)} of {len(rows or [])} sweep jobs failed", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE if all(r["user_error"] for r in failed) else 1)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def _hydra_evaluate(cfg: DictConfig) -> dict:
    from weighted_mtp.evaluation.evaluate import evaluate_config, format_summary

    global _task_started
    _task_started = True
    try:
        summary = evaluate_config(cfg)
    except ValueError as exc:  # a value evaluate_config cannot use
        sys.exit(report(UserError(str(exc))))
    except UserError as exc:
        sys.exit(report(exc))
    print(format_summary(summary, list(cfg.evaluation.ks)))
    print(f"results in {cfg.evaluation.out_dir}", flush=True)
    return summary


def evaluate_main() -> None:
    """``wmtp-eval``: pass@k of a checkpoint, composed from conf/evaluate.yaml."""
    set_cli("hydra")
    cuda_alloc.configure()
    register_schema()
    try:
        sys.argv = [sys.argv[0], *_translate_argv(sys.argv[1:], "evaluate")]
        _hydra_evaluate()
    except UserError as exc:
        sys.exit(report(exc))
    except SystemExit as exc:
        if exc.code == 1 and not _task_started:  # composition error: a user error
            sys.exit(USER_ERROR_EXIT_CODE)
        raise


def plan_main() -> None:
    """``wmtp-plan stage=rho1 profile=vessl [--gpus 4 --json ...]``: the plan command on a
    config composed from conf/ (Hydra overrides; plan options start with ``--``)."""
    import argparse

    cuda_alloc.configure()

    from weighted_mtp.config.loader import compose
    from weighted_mtp.plan.command import add_plan_arguments, plan_and_print

    parser = argparse.ArgumentParser(
        prog="wmtp-plan", description="memory/time plan of a composed config (fake tensors)"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    add_plan_arguments(parser)
    args = parser.parse_args()
    set_cli("hydra")

    def body() -> int:
        try:
            return plan_and_print(compose(args.overrides), args)
        except (HydraException, OmegaConfBaseException) as exc:  # a bad override or value
            raise UserError(str(exc)) from exc

    sys.exit(run_reported(body))


if __name__ == "__main__":
    main()
