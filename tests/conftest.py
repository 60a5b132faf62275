"""Shared fixtures."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

# One intra-op thread per process: the suite runs on small machines (2 cores) and starts
# subprocesses (torchrun ranks, sweeps); oversubscribed torch threads spin and crawl.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import weighted_mtp  # noqa: E402, F401  (sets MLflow's telemetry opt-out before any import)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
STAGES = ("baseline", "critic", "verifiable", "rho1")
PROFILES = ("local", "vessl")


# The files with the longest tests (pytest --durations), run first: under pytest-xdist
# (`make test`: --dist loadfile --no-loadscope-reorder hands out files in this order) no
# long file starts last and runs alone while the other workers idle.
LONG_FILES_FIRST = (
    "tests/unit/test_plan.py",
    "tests/integration/test_fsdp.py",
    "tests/integration/test_evaluate.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


@pytest.fixture
def one_thread():
    """One intra-op thread for this test (tiny models: faster, and immune to a busy
    machine's barriers) even where OMP_NUM_THREADS asks for more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def path_overrides(tmp_path: Path) -> list[str]:
    """Overrides pointing every path field at existing placeholder files in tmp_path.

    For config tests that must not depend on the real micro assets.
    """
    for d in ("policy", "tokenizer", "reference"):
        (tmp_path / d).mkdir()
    for f in ("train.jsonl", "valid.jsonl", "critic.pt"):
        (tmp_path / f).write_text("")
    return [
        f"models.policy.path={tmp_path / 'policy'}",
        f"models.policy.tokenizer_path={tmp_path / 'tokenizer'}",
        f"models.reference.path={tmp_path / 'reference'}",
        f"dataset.train={tmp_path / 'train.jsonl'}",
        f"dataset.validation={tmp_path / 'valid.jsonl'}",
        f"experiment.critic_checkpoint={tmp_path / 'critic.pt'}",
    ]


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock`` (blocks until the holder lets go)."""
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of this test run that every pytest-xdist worker sees (the workers'
    common base temp); the session's own base temp without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def micro_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro assets (`python -m weighted_mtp setup`), built once per test run: the
    first xdist worker to get here builds them under a lock, the others wait and share
    them. Read-only for tests (copy them to change anything)."""
    from weighted_mtp.setup_assets import setup

    shared = run_shared_dir(tmp_path_factory)
    root, done = shared / "micro-storage", shared / "micro-storage.done"
    with _exclusive(shared / "micro-storage.lock"):
        if not done.exists():
            # models, not good ones (test_evaluate's demo passes the same budget)
            setup(root, pretrain_problems=200, pretrain_steps=40, reference_steps=10)
            done.touch()
    return root


#: a sweep job's tiny budget on the micro assets: 4 steps of batch 2 (`wmtp -m` tests)
SWEEP_TINY = [
    "data_sampling.n_samples=8",
    "training.n_epochs=1",
    "training.batch_size=2",
    "training.eval_samples=4",
    "dataset.max_length=160",
    "checkpoint.save_checkpoint_every=0",
]


def storage_overrides(root: Path) -> list[str]:
    """Overrides that point the local profile at micro assets under ``root``."""
    data = root / "datasets" / "synthetic" / "processed"
    return [
        f"models.policy.path={root / 'models' / 'micro-mtp'}",
        f"models.policy.tokenizer_path={root / 'models' / 'micro-mtp' / 'tokenizer'}",
        f"models.reference.path={root / 'models' / 'micro-ref'}",
        f"dataset.train={data / 'train.jsonl'}",
        f"dataset.validation={data / 'valid.jsonl'}",
    ]


def two_step_baseline(root: Path, save_dir: Path):
    """A 2-step baseline config on the micro assets under ``root``, saving to ``save_dir``
    (the module-scoped runs whose checkpoint the robustness and schema tests tamper with)."""
    from weighted_mtp.config.loader import compose

    return compose(
        [
            "stage=baseline",
            "profile=local",
            *storage_overrides(root),
            "data_sampling.n_samples=4",
            "training.n_epochs=1",
            "training.batch_size=2",
            "training.eval_samples=2",
            "dataset.max_length=64",
            "checkpoint.save_checkpoint_every=0",
            f"checkpoint.save_dir={save_dir}",
        ]
    )


@pytest.fixture
def make_cfg(micro_storage: Path, tmp_path: Path):
    """``make_cfg(stage, *overrides)``: a small local-profile config on the micro assets,
    checkpoints and caches under tmp_path."""
    from weighted_mtp.config.loader import compose

    def build(stage: str = "baseline", *overrides: str):
        return compose(
            [
                f"stage={stage}",
                "profile=local",
                *storage_overrides(micro_storage),
                "data_sampling.n_samples=16",
                "training.n_epochs=1",
                "training.batch_size=2",
                "training.eval_samples=4",
                "dataset.max_length=160",
                "checkpoint.save_checkpoint_every=0",
                f"checkpoint.save_dir={tmp_path / 'ckpt' / stage}",
                f"models.reference.cache_dir={tmp_path / 'refcache'}",
                *overrides,
            ]
        )

    return build
