"""Progress: a bar on a terminal, one plain line per interval in a log file."""

from __future__ import annotations

import io

from weighted_mtp.progress import Progress, is_terminal


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_file_gets_one_plain_line_per_interval_and_one_at_the_end() -> None:
    out = io.StringIO()
    with Progress(25, "baseline", "steps", every=10, stream=out) as bar:
        for i in range(25):
            bar.update(1, f"loss={i}")
    assert "\r" not in out.getvalue()
    assert out.getvalue().splitlines() == [
        "baseline 10/25 steps loss=9",
        "baseline 20/25 steps loss=19",
        "baseline 25/25 steps loss=24",
    ]


def test_default_interval_is_a_tenth_and_updates_may_jump() -> None:
    out = io.StringIO()
    bar = Progress(100, "generate", "samples", initial=0, stream=out)
    for n in (4, 4, 4, 88):  # batches: crossing 10, then 20 and 100 at once
        bar.update(n)
    assert out.getvalue().splitlines() == [
        "generate 12/100 samples",
        "generate 100/100 samples",
    ]


def test_resumed_progress_counts_from_initial() -> None:
    out = io.StringIO()
    bar = Progress(6, "rho1", "steps", initial=4, every=2, stream=out)
    bar.update(1)
    bar.update(1)
    assert out.getvalue().splitlines() == ["rho1 6/6 steps"]


def test_terminal_gets_a_redrawn_bar_and_disabled_progress_writes_nothing() -> None:
    tty = _Terminal()
    assert is_terminal(tty) and not is_terminal(io.StringIO())
    with Progress(3, "execute", "programs", stream=tty) as bar:
        for _ in range(3):
            bar.update(1, "ok=1")
    text = tty.getvalue()
    assert "\r" in text and "execute" in text and "3/3" in text and "ok=1" in text
    quiet = io.StringIO()
    with Progress(3, "execute", stream=quiet, enabled=False) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""
