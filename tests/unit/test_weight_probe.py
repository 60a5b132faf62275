"""Weight probe: the bug's token index, the split means, the probe against hand-computed
TD weights, and the probe on a trained verifiable checkpoint."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from tests.helpers.models import tiny_mtp
from weighted_mtp.data.collate import Collator
from weighted_mtp.data.records import Record
from weighted_mtp.evaluation.weight_probe import (
    first_diverging_token,
    probe_records,
    probed_records,
    split_means,
    token_weights,
)
from weighted_mtp.weighting.td import TDErrorWeighting
from weighted_mtp.weighting.uniform import UniformWeighting


class WordTokenizer:
    """Words, single spaces and single symbols as tokens; ids by first sight (< 61)."""

    bos_id, eos_id, pad_id = 1, 2, -1

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.pieces: dict[int, str] = {}

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        out = []
        for piece in re.findall(r"\w+|\s|[^\w\s]", text):
            if piece not in self.ids:
                self.ids[piece] = i = 3 + len(self.ids)
                self.pieces[i] = piece
                assert i < 61, "the tiny model's vocabulary"
            out.append(self.ids[piece])
        return [self.bos_id] * bos + out + [self.eos_id] * eos

    def decode(self, ids) -> str:
        return "".join(self.pieces.get(i, "") for i in ids)


def record(output: str, correct: bool = False, problem: str = "p", **meta) -> Record:
    return Record(
        instruction="add a and b",
        input="",
        output=output,
        task_id=f"{problem}/{output}",
        is_correct=correct,
        metadata={"source": "synthetic", "difficulty": 1, "problem_id": problem, **meta},
    )


def test_first_diverging_token_on_a_hand_example() -> None:
    tok = WordTokenizer()
    out = "print(a + b)\n"  # print ( a _ + _ b ) \n: 9 tokens, then EOS
    assert first_diverging_token(tok, out, 0) == 0
    assert first_diverging_token(tok, out, 3) == 0  # inside "print"
    assert first_diverging_token(tok, out, 5) == 1  # "("
    assert first_diverging_token(tok, out, out.index("+")) == 4
    assert first_diverging_token(tok, out, len(out) - 1) == 8  # the newline
    assert first_diverging_token(tok, out, len(out)) == 9  # past the end: the EOS
    with pytest.raises(ValueError, match="outside"):
        first_diverging_token(tok, out, len(out) + 1)


def test_split_means_by_hand() -> None:
    w = torch.tensor([[0.0, 2.0, 1.0, 0.5, 0.0], [0.0, 0.0, 3.0, 1.0, 1.0], [9.0, 9, 9, 9, 9]])
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = split_means(w, mask, [2, 0, -1])  # row 0: bug 0.5, rest 2, 1; row 1: bug 3
    assert got["n_records"] == 2 and got["n_rest_tokens"] == 4
    assert got["first_diverging_mean"] == pytest.approx((0.5 + 3.0) / 2)
    assert got["rest_mean"] == pytest.approx((2 + 1 + 1 + 1) / 4)
    assert got["ratio"] == pytest.approx(1.75 / 1.25)
    assert got["frac_below_rest"] == pytest.approx(0.5)
    empty = split_means(w, mask, [-1, -1, -1])
    assert empty["n_records"] == 0 and math.isnan(empty["ratio"])
    with pytest.raises(ValueError, match="bug index"):
        split_means(w, mask, [3, -1, -1])


def test_token_weights_take_head0_of_the_previous_position() -> None:
    head = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert token_weights(head, mask).tolist() == [[0, 0, 3, 0], [0, 0, 15, 18]]


def test_probed_records_read_or_derive_the_bug_offset() -> None:
    recs = [
        record("x = 1\n", correct=True),
        record("x = 2\n", bug="wrong", bug_offset=4),
        record("x = 3\n", bug="wrong"),  # older file: derived from the correct sibling
        record("y = 3\n", bug="wrong", problem="q"),  # no correct sibling: left out
    ]
    assert [(r.output, off) for r, off in probed_records(recs)] == [("x = 2\n", 4), ("x = 3\n", 4)]


class QueuedValues(nn.Module):
    """A value head that returns prepared [B, S] values, one table per call."""

    def __init__(self, tables: list[Tensor]) -> None:
        super().__init__()
        self.tables = list(tables)

    def forward(self, hidden: Tensor) -> Tensor:
        table = self.tables.pop(0)
        assert table.shape == hidden.shape[:2]
        return table


def test_probe_returns_the_hand_computed_td_weights() -> None:
    """V = 0.5 up to the state before the bug token, 0.1 from the bug token on, reward 0:
    delta = -0.4 at the bug token, R - V = -0.1 at the EOS, 0 elsewhere (beta 0.9)."""
    torch.manual_seed(0)
    tok = WordTokenizer()
    long = "s = 0\n" * 30 + "print(s + 1)\n"
    recs = [
        (record("print(a + b)\n"), 8),  # bug at "+" (token 4 of 9 + EOS)
        (record("c = a * b\nprint(c)\n"), 4),  # "a" (token 4 of 15 + EOS)
        (record(long), len(long) - 4),  # the bug token is cut by max_length
    ]
    collator = Collator(tok, max_length=40)
    batch = collator([r for r, _ in recs[:2]])
    prompt_len = [int(m.nonzero()[0]) for m in batch.response_mask]
    n_resp = batch.response_mask.sum(1).tolist()
    bug_k = [first_diverging_token(tok, r.output, off) for r, off in recs[:2]]
    assert bug_k == [4, 4] and n_resp == [10, 16]
    table = torch.full(batch.input_ids.shape, 0.5)
    for i in range(2):
        table[i, prompt_len[i] + bug_k[i] :] = 0.1
    head = QueuedValues([table])
    td = TDErrorWeighting(beta=0.9, clip_min=0.1, clip_max=5.0)
    got = probe_records(tiny_mtp(), head, tok, recs, td, max_length=40, batch_size=2)
    bug_w, eos_w = math.exp(-0.4 / 0.9), math.exp(-0.1 / 0.9)
    rest = [(n - 2) * 1.0 + eos_w for n in n_resp]
    assert got["n_records"] == 2 and got["n_truncated"] == 1 and not head.tables
    assert got["first_diverging_mean"] == pytest.approx(bug_w)
    assert got["rest_mean"] == pytest.approx(sum(rest) / sum(n - 1 for n in n_resp))
    assert got["ratio"] == pytest.approx(got["first_diverging_mean"] / got["rest_mean"])
    assert got["frac_below_rest"] == 1.0
    # a weighting without values: every token weighs 1, no value head needed
    ones = probe_records(tiny_mtp(), None, tok, recs, UniformWeighting(), max_length=40)
    assert (ones["first_diverging_mean"], ones["rest_mean"], ones["ratio"]) == (1.0, 1.0, 1.0)


def test_probe_on_a_trained_verifiable_checkpoint(make_cfg, micro_storage: Path) -> None:
    """critic -> verifiable on the micro assets; the probe reads policy, tokenizer, value
    head and weighting from the final checkpoint and probes the real synthetic records."""
    from weighted_mtp import app
    from weighted_mtp.evaluation.weight_probe import bug_token_weights, weighting_of

    small = ("data_sampling.n_samples=4", "training.batch_size=4")
    critic = make_cfg("critic", *small)
    app.run(critic)
    ver = make_cfg(
        "verifiable",
        *small,
        f"experiment.critic_checkpoint={critic.checkpoint.save_dir}/checkpoint_final",
    )
    app.run(ver)
    final = Path(ver.checkpoint.save_dir) / "checkpoint_final"
    weighting = weighting_of(final)
    assert isinstance(weighting, TDErrorWeighting) and weighting.beta == ver.training.beta
    data = micro_storage / "datasets" / "synthetic" / "processed" / "valid.jsonl"
    got = bug_token_weights(final, data, limit=12)
    assert got["n_records"] + got["n_truncated"] == 12 and got["n_records"] > 0
    for key in ("first_diverging_mean", "rest_mean"):
        assert weighting.clip_min <= got[key] <= weighting.clip_max
    assert got["ratio"] == pytest.approx(got["first_diverging_mean"] / got["rest_mean"])
    uniform = bug_token_weights(final, data, UniformWeighting(), limit=12)
    assert uniform["ratio"] == 1.0 and uniform["n_records"] == got["n_records"]
