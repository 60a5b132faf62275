"""``evaluate`` with ``speculative_drafts``: the heads' drafting usefulness per problem and
in the summary (tiny model, tiny tokenizer, a few stdio problems), and the per-stage table
(``speculative_table``) on hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from tests.helpers.models import tiny_mtp
from weighted_mtp.data.collate import encode_prompt
from weighted_mtp.data.records import Record
from weighted_mtp.errors import UserError
from weighted_mtp.evaluation import evaluate as ev
from weighted_mtp.evaluation.config import EvalConfig
from weighted_mtp.evaluation.generate import SamplingParams, generate
from weighted_mtp.evaluation.spec_summary import ROW_FIELDS, speculative_table
from weighted_mtp.evaluation.speculative import speculative_generate
from weighted_mtp.models.formats import save_meta_dir
from weighted_mtp.models.mtp import MTPTransformer
from weighted_mtp.models.tokenizer import TOKENIZER_FILE, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW = 20
TASKS = [
    ("Read n and print n + {k}.", "print(int(input()) + {k})\n", "{k}\n", "{k2}\n"),
    ("Read a line and print it {k} times.", "s = input()\nprint(s * {k})\n", "a\n", "{a}\n"),
]


def _records() -> list[Record]:
    out = []
    for k in range(1, 4):
        for j, (instr, prog, tin, tout) in enumerate(TASKS):
            pid = f"t{j}:k={k}"
            out.append(
                Record(
                    instruction=instr.format(k=k),
                    input="",
                    output=prog.format(k=k),
                    task_id=f"{pid}/correct/0",
                    is_correct=True,
                    metadata={
                        "source": "synthetic",
                        "difficulty": k,
                        "problem_id": pid,
                        "tests": [
                            {
                                "input": tin.format(k=k),
                                "output": tout.format(k2=2 * k, a="a" * k),
                            }
                        ],
                    },
                )
            )
    return out  # 6 problems


def _copying(model: MTPTransformer) -> MTPTransformer:
    """Every block the identity and unit-norm embeddings tied to the output: every head
    predicts "the input token again", so greedy repeats the prompt's last token and every
    draft is accepted."""
    with torch.no_grad():
        for block in [*model.layers, *model.extra_heads]:
            block.attention.wo.weight.zero_()
            block.feed_forward.w2.weight.zero_()
        emb = model.tok_embeddings.weight
        emb.copy_(torch.nn.functional.normalize(emb, dim=-1))
        model.output.weight.copy_(emb)
    return model


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny Meta-format policies (4 heads: 3 drafts at most; random weights, and
    :func:`_copying`) with a tiny SentencePiece tokenizer, and a split of 6 stdio problems."""
    root = tmp_path_factory.mktemp("spec-eval")
    records = _records()
    data = root / "test.jsonl"
    data.write_text("".join(r.to_json() + "\n" for r in records))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"{r.instruction}\n{r.output}" for r in records * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "sp"), vocab_size=90, model_type="bpe",
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, byte_fallback=False, minloglevel=2,
    )  # fmt: skip
    tok = load_tokenizer(root / "sp.model")
    for name, build in (("model", lambda m: m), ("copying", _copying)):
        (root / name / "tokenizer").mkdir(parents=True)
        (root / name / "tokenizer" / TOKENIZER_FILE).write_bytes((root / "sp.model").read_bytes())
        model = tiny_mtp(3, std=0.3, n_layers=6, vocab_size=tok.vocab_size, n_future_tokens=4)
        save_meta_dir(build(model), root / name)
    return {"model": root / "model", "copying": root / "copying", "data": data}


def _cfg(assets: dict[str, Path], out: Path, **kw) -> EvalConfig:
    base = dict(
        checkpoint=str(assets["model"]),
        data=str(assets["data"]),
        out_dir=str(out),
        max_new_tokens=MAX_NEW,
        batch_size=4,  # two batches, left-padded: greedy tokens come from batched decoding
        isolation="none",
        concurrency=2,
    )
    return EvalConfig(**{**base, **kw})


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def test_greedy_evaluation_records_speculative_fields(assets, tmp_path: Path):
    from weighted_mtp.training.checkpoint import load_policy

    out = tmp_path / "eval"
    summary = ev.evaluate(_cfg(assets, out, speculative_drafts=3))
    rows = _rows(out)
    assert len(rows) == 6
    model, tok = load_policy(assets["model"])
    records = {r.problem_id: r for r in _records()}
    prompts = [encode_prompt(records[r["problem_id"]], tok) for r in rows]
    greedy = generate(model, prompts, SamplingParams(max_new_tokens=MAX_NEW), tok.eos_id)
    for row, prompt, ref in zip(rows, prompts, greedy, strict=True):
        assert all(key in row for key in ROW_FIELDS)
        # the fields are exactly this problem's speculative decode, done alone
        spec, st = speculative_generate(model, prompt, MAX_NEW, tok.eos_id, 3)
        assert (row["spec_forwards"], row["spec_proposed"]) == (st.forwards, st.proposed)
        assert (row["spec_accepted"], row["spec_tokens"]) == (st.accepted, st.tokens)
        # the evaluated greedy program is these tokens, and speculation reproduced them
        assert row["samples"][0]["completion"] == tok.decode(ref)
        assert row["spec_identical"] is True and spec == ref
        assert st.tokens == len(ref) + (len(ref) < MAX_NEW)  # EOS counted when emitted
        assert 0 <= row["spec_accepted"] <= row["spec_proposed"] <= 3 * (row["spec_forwards"] - 1)
    forwards = sum(r["spec_forwards"] for r in rows)
    proposed = sum(r["spec_proposed"] for r in rows)
    assert proposed > 0
    assert summary["speculative/drafts"] == 3
    assert summary["speculative/acceptance"] == sum(r["spec_accepted"] for r in rows) / proposed
    assert 0.0 <= summary["speculative/acceptance"] <= 1.0
    tpf = sum(r["spec_tokens"] for r in rows) / forwards
    assert summary["speculative/tokens_per_forward"] == tpf >= 1.0
    assert summary["speculative/identical_fraction"] == 1.0
    assert summary["speculative/seconds"] > 0
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["speculative/tokens_per_forward"] == tpf
    metrics = ev.metrics_of(summary, [1])
    assert metrics["eval/speculative/acceptance"] == summary["speculative/acceptance"]
    assert "3 drafts" in ev.format_summary(summary, [1])
    # the per-stage table reads the same rows to the same numbers
    table = speculative_table({"baseline": rows})["baseline"]
    assert table["tokens_per_forward"] == tpf and table["n_problems"] == 6
    assert table["acceptance"] == summary["speculative/acceptance"]
    # speculation off, or a sampled evaluation: no speculative fields or keys
    for kw in ({}, {"speculative_drafts": 3, "temperature": 0.8}):
        plain = ev.evaluate(_cfg(assets, tmp_path / "plain", **kw))
        assert not [k for k in plain if k.startswith("speculative/")]
        assert not any(key in row for row in _rows(tmp_path / "plain") for key in ROW_FIELDS)


@pytest.mark.parametrize(
    "drafts, forwards",
    [
        (3, 6),  # prefill: token 1; then 4 tokens (3 accepted drafts + 1) per forward
        (1, 11),  # prefill: token 1; then 2 tokens per forward
    ],
)
def test_perfect_drafts_through_evaluate(assets, tmp_path: Path, drafts: int, forwards: int):
    from weighted_mtp.training.checkpoint import load_policy

    out = tmp_path / "eval"
    summary = ev.evaluate(
        _cfg(assets, out, checkpoint=str(assets["copying"]), speculative_drafts=drafts)
    )
    _, tok = load_policy(assets["copying"])
    records = {r.problem_id: r for r in _records()}
    for row in _rows(out):
        last = encode_prompt(records[row["problem_id"]], tok)[-1]
        assert row["samples"][0]["completion"] == tok.decode([last] * MAX_NEW)  # greedy
        assert {k: row[k] for k in ROW_FIELDS} == {
            "spec_forwards": forwards,
            "spec_proposed": drafts * (forwards - 1),
            "spec_accepted": drafts * (forwards - 1),
            "spec_tokens": MAX_NEW,
            "spec_identical": True,
        }
    assert summary["speculative/acceptance"] == 1.0
    assert summary["speculative/tokens_per_forward"] == pytest.approx(MAX_NEW / forwards)
    assert summary["speculative/identical_fraction"] == 1.0


def test_invalid_drafts_are_user_errors(assets, tmp_path: Path, monkeypatch, capsys):
    from weighted_mtp.__main__ import main

    called = []
    monkeypatch.setattr(
        "weighted_mtp.evaluation.generate.generate_batched", lambda *a, **k: called.append(1)
    )
    with pytest.raises(UserError, match="speculative_drafts must be 0"):
        ev.evaluate(_cfg(assets, tmp_path / "neg", speculative_drafts=-1))
    # more drafts than the model has extra heads: refused once its shape is known
    with pytest.raises(UserError, match=r"speculative_drafts 4: .*n_future_tokens 4.*1\.\.3"):
        ev.evaluate(_cfg(assets, tmp_path / "many", speculative_drafts=4))
    assert called == [] and not (tmp_path / "many" / "results.jsonl").exists()
    argv = ["evaluate", "--checkpoint", str(assets["model"]), "--data", str(assets["data"])]
    argv += ["--isolation", "none", "--out", str(tmp_path / "cli")]
    assert main([*argv, "--speculative-drafts", "7"]) == 2
    assert "speculative_drafts 7" in capsys.readouterr().err and called == []


def test_hydra_schema_has_the_field():
    from omegaconf import OmegaConf

    from weighted_mtp.config.schema import EvalRootConfig

    cfg = OmegaConf.merge(
        OmegaConf.structured(EvalRootConfig),
        OmegaConf.from_dotlist(["evaluation.speculative_drafts=2"]),
    )
    assert cfg.evaluation.speculative_drafts == 2
    with pytest.raises(Exception, match="speculative_drafts"):
        OmegaConf.merge(cfg, OmegaConf.from_dotlist(["evaluation.speculative_drafts=many"]))


def _row(forwards: int, proposed: int, accepted: int, tokens: int, identical: bool) -> dict:
    return {
        "problem_id": "p",
        "pass@1": 0.0,
        **dict(zip(ROW_FIELDS, (forwards, proposed, accepted, tokens, identical), strict=True)),
    }


def test_speculative_table_on_hand_made_rows():
    rows = {
        # 10 + 20 tokens in 4 + 6 forwards; 9 + 15 drafts, 6 + 12 accepted; 1 of 2 identical
        "baseline": [_row(4, 9, 6, 10, True), _row(6, 15, 12, 20, False)],
        # every row the same: the bootstrap interval is that one value
        "rho1": [_row(5, 12, 3, 8, True)] * 3,
        "critic": [{"problem_id": "p", "pass@1": 1.0}],  # not evaluated speculatively
        "empty": [],
    }
    table = speculative_table(rows, n_boot=500)
    assert list(table) == ["baseline", "rho1"]
    b = table["baseline"]
    assert b["n_problems"] == 2
    assert b["acceptance"] == pytest.approx(18 / 24)
    assert b["tokens_per_forward"] == pytest.approx(30 / 10)
    assert b["identical_fraction"] == 0.5
    ci = b["tokens_per_forward_ci"]
    assert ci["mean"] == pytest.approx(3.0)
    # replicates resample the two rows: ratios 10/4, 20/6 or 30/10, nothing outside
    assert 2.5 - 1e-9 <= ci["lo"] <= 3.0 <= ci["hi"] <= 20 / 6 + 1e-9 and ci["lo"] < ci["hi"]
    r = table["rho1"]
    assert (r["acceptance"], r["tokens_per_forward"], r["identical_fraction"]) == (
        pytest.approx(3 / 12),
        pytest.approx(8 / 5),
        1.0,
    )
    assert r["tokens_per_forward_ci"] == pytest.approx({"mean": 1.6, "lo": 1.6, "hi": 1.6})
    json.dumps(table)  # JSON-ready (compare.json)
    # nothing proposed (every decode stopped after its first token): acceptance 0, as
    # SpeculativeStats reports it
    one = speculative_table({"s": [_row(1, 0, 0, 1, True)]})["s"]
    assert one["acceptance"] == 0.0 and one["tokens_per_forward"] == 1.0
