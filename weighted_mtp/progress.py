"""Progress that reads well where it lands: a bar on a terminal, plain lines in a log file.

A tqdm bar redraws itself with carriage returns; written to a file (a Slurm ``.err``, a
VESSL log, ``make demo > log``) every redraw stays, thousands of ``\\r`` frames on one
line. :class:`Progress` draws the bar only when its stream is a terminal; otherwise it
writes one plain line every ``every`` updates and one at the end.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

from tqdm import tqdm


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (a bar can redraw in place)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


# What turns off other libraries' tqdm bars (huggingface_hub / transformers downloads and
# shard loading, datasets' map, tqdm itself from 4.66 on: TQDM_DISABLE).
THIRD_PARTY_BAR_ENV = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_third_party_bars(stream: TextIO | None = None) -> bool:
    """In file mode (``stream``, default stderr, is not a terminal) turn off the progress
    bars of third-party libraries, whose ``\\r`` redraws would fill a log file; this
    module's :class:`Progress` writes plain lines there instead. Returns whether it did.
    A variable the user set is kept."""
    if is_terminal(stream if stream is not None else sys.stderr):
        return False
    for key, value in THIRD_PARTY_BAR_ENV.items():
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:  # already imported: it read the env var then
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except Exception:  # noqa: BLE001 - an old transformers: nothing to turn off
            pass
    return True


class Progress:
    """Progress of ``total`` units of work named ``desc``.

    On a terminal: a tqdm bar, ``status`` as its postfix. Elsewhere: the line
    ``"<desc> <n>/<total> <unit> <status>"`` each time ``n`` reaches a multiple of ``every``
    (default: a tenth of ``total``) and when it reaches ``total``. ``enabled=False``
    writes nothing (e.g. any rank but 0).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        every: int | None = None,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every = max(1, every if every is not None else total // 10)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self._lock = threading.Lock()  # updates may come from worker threads
        self.bar: tqdm | None = None
        if enabled and is_terminal(self.stream):
            self.bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                dynamic_ncols=True, disable=False,  # a terminal: TQDM_DISABLE is for others
            )  # fmt: skip

    def update(self, n: int = 1, status: str = "") -> None:
        """Count ``n`` more units done; ``status`` is a short ``key=value`` summary."""
        with self._lock:
            before, self.n = self.n, self.n + n
            if self.bar is not None:
                if status:
                    self.bar.set_postfix_str(status, refresh=False)
                self.bar.update(n)
            elif self.enabled and (
                self.n // self.every > before // self.every or before < self.total <= self.n
            ):
                line = f"{self.desc} {self.n}/{self.total} {self.unit}"
                print(f"{line} {status}" if status else line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
