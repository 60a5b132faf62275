"""Every example in the docs runs. Code blocks are marked by their title:

- ```` ```bash title="local" ````: run as written (bash, ``.venv/bin`` first on PATH) in one
  working directory whose ``storage/models`` and ``storage/datasets`` are the micro assets
  (the repository's ``storage/`` when ``setup`` built it there, else the test run's own);
  Getting started's blocks run first, in page order (critic -> verifiable, baseline, rho1,
  evaluate, compare), as a reader would run them;
- ```` ```bash title="local, full size" ````: the same directory, but each command is only
  composed and validated (``validate-config``'s checks, in-process), not trained;
- ```` ```bash title="cluster" ````: composed and validated against a ``storage/`` tree that
  holds only the shape files of ``conf/shapes/`` (no weights), without the GPU memory plan
  that ``runtime.gpu_memory_gb`` adds (``tests/unit/test_plan.py`` covers it; it takes
  minutes at 7B on a small machine); ``wmtp-plan`` lines are skipped for the same reason.

Blocks without a title (install, downloads, ``setup``, ``make demo``) are not run here:
``make`` and ``setup`` are what the suite itself runs, downloads need the network.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO
from weighted_mtp.__main__ import build_parser
from weighted_mtp.config.loader import compose, load_flat
from weighted_mtp.config.validate import validate

DOCS = REPO / "docs"
BIN = Path(sys.executable).parent
BLOCK = re.compile(r'^```bash title="([^"]+)"\n(.*?)^```', flags=re.S | re.M)
CHECKED = ("local, full size", "cluster")
PAGES = ["getting-started.md"] + sorted(
    p.name for p in DOCS.glob("*.md") if p.name != "getting-started.md"
)


def blocks(page: str) -> list[tuple[str, str]]:
    return BLOCK.findall((DOCS / page).read_text())


def test_every_title_is_known() -> None:
    titles = {t for page in PAGES for t, _ in blocks(page)}
    assert titles <= {"local", *CHECKED}, titles
    assert {"local", *CHECKED} <= titles


def commands(text: str) -> list[list[str]]:
    """The block's commands as argv lists (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _seed_overrides(args: list[str]) -> tuple[str, list[str]]:
    config, overrides, it = "", [], iter(args)
    for a in it:
        if a == "--config":
            config = next(it)
        elif a == "--override":
            overrides.append(next(it))
    return config, overrides


def check(argv: list[str], cwd: Path, cluster: bool) -> None:
    """Compose and validate one command of a checked block, in-process, in ``cwd``."""
    while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    redirect = None
    if ">" in argv:
        i = argv.index(">")
        argv, redirect = argv[:i], argv[i + 1]
    if argv[0] == "torchrun":  # torchrun ... -m weighted_mtp.cli ARGS == wmtp ARGS
        argv = ["wmtp", *argv[argv.index("weighted_mtp.cli") + 1 :]]
    tool, args = argv[0], argv[1:]
    if tool == "wmtp-plan" or "--help" in args:
        return
    if tool in ("wmtp", "wmtp-eval"):
        overrides = []
        for a in args:
            if a in ("-m", "--multirun", "--cfg", "job") or a.startswith("hydra"):
                continue
            key, _, value = a.partition("=")
            if "," in value and not value.startswith(("[", "{", "'", '"')):
                value = value.split(",")[0]  # a sweep: its first job
            overrides.append(f"{key}={value}")
        if tool == "wmtp-eval":  # composed by the evaluation's own checks when run
            assert all(o.startswith("evaluation.") for o in overrides), overrides
            return
        cfg = compose(overrides)
        if redirect:
            (cwd / redirect).write_text(OmegaConf.to_yaml(cfg))
        else:
            validate(cfg, plan=not cluster)
        return
    if argv[:3] == [sys.executable, "-m", "weighted_mtp"] or argv[:3] == [
        "python",
        "-m",
        "weighted_mtp",
    ]:
        command = argv[3]
        if command in ("train", "validate-config"):
            config, overrides = _seed_overrides(argv[4:])
            validate(load_flat(cwd / config, overrides), source=config, plan=not cluster)
        else:  # any other command: its arguments parse
            build_parser().parse_args(argv[3:])
        return
    raise AssertionError(f"no check for the docs command: {shlex.join(argv)}")


def run_block(text: str, cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, (
        f"{text}\n--- stdout\n{out.stdout[-3000:]}\n--- {out.stderr[-3000:]}"
    )


def micro_root(request: pytest.FixtureRequest) -> Path:
    own = REPO / "storage"
    if (own / "models" / "micro-mtp").is_dir() and (
        own / "datasets" / "synthetic" / "processed" / "test.jsonl"
    ).is_file():
        return own
    return request.getfixturevalue("micro_storage")


@pytest.fixture(scope="module")
def local_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reader's working directory, after Getting started's local blocks ran in it."""
    root = micro_root(request)
    cwd = tmp_path_factory.mktemp("docs-local")
    (cwd / "storage").mkdir()
    for sub in ("models", "datasets"):
        (cwd / "storage" / sub).symlink_to(root / sub)
    for title, text in blocks("getting-started.md"):
        if title == "local":
            run_block(text, cwd)
    return cwd


@pytest.fixture(scope="module")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage/ tree in the layout docs/cluster.md gives, with shape files only."""
    cwd = tmp_path_factory.mktemp("docs-cluster")
    models = cwd / "storage" / "models"
    (models / "meta-llama-mtp" / "tokenizer").mkdir(parents=True)
    shutil.copy(REPO / "conf/shapes/meta-7b-mtp/params.json", models / "meta-llama-mtp")
    (models / "ref-sheared-llama-2.7b").mkdir()
    shutil.copy(
        REPO / "conf/shapes/sheared-llama-2.7b/config.json", models / "ref-sheared-llama-2.7b"
    )
    data = cwd / "storage" / "datasets" / "codecontests" / "processed"
    data.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (data / f"{split}.jsonl").write_text("")
    (cwd / "storage/checkpoints/critic/critic-pretrain/checkpoint_best").mkdir(parents=True)
    return cwd


def test_getting_started_ran(local_dir: Path) -> None:
    ckpts = local_dir / "storage" / "checkpoints"
    for stage, name in (
        ("critic", "critic-pretrain"),
        ("verifiable", "verifiable-wmtp"),
        ("baseline", "baseline-mtp"),
        ("rho1", "rho1-weighted"),
    ):
        assert (ckpts / stage / name / "checkpoint_final" / "manifest.json").is_file()
    for job in ("0", "1"):
        assert (local_dir / "storage" / "eval" / "first" / job / "summary.json").is_file()
    assert (local_dir / "storage" / "compare" / "first" / "compare.md").is_file()


@pytest.mark.parametrize("page", PAGES)
def test_page_examples(
    page: str, local_dir: Path, cluster_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for title, text in blocks(page):
        if title == "local" and page != "getting-started.md":
            run_block(text, local_dir)
        elif title in CHECKED:
            cwd = cluster_dir if title == "cluster" else local_dir
            monkeypatch.chdir(cwd)
            for argv in commands(text):
                check(argv, cwd, cluster=title == "cluster")
