"""Self-speculative decoding equals plain greedy decoding; its statistics are consistent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.models import tiny_mtp
from weighted_mtp.evaluation.generate import SamplingParams, generate
from weighted_mtp.evaluation.speculative import SpeculativeStats, speculative_generate
from weighted_mtp.models.mtp import MTPTransformer

VOCAB = 61


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(n_future: int = 4, seed: int = 0) -> MTPTransformer:
    return tiny_mtp(seed, n_layers=6, vocab_size=VOCAB, n_future_tokens=n_future).eval()


def _prompts(n: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 16, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lens]


def _check_stats(st: SpeculativeStats, n_draft: int, n_out: int, eos: bool) -> None:
    assert st.tokens == n_out + eos
    assert 0 <= st.accepted <= st.proposed <= n_draft * (st.forwards - 1)
    # every forward after the prefill emits the accepted drafts and one head-0 token
    assert st.tokens <= st.forwards + st.accepted
    assert 0.0 <= st.acceptance_rate <= 1.0 and st.tokens_per_forward <= n_draft + 1


@pytest.mark.parametrize("n_future", [2, 4])
def test_speculative_equals_greedy_on_random_model(n_future):
    m = _model(n_future)
    prompts = _prompts(32)
    greedy = generate(m, prompts, SamplingParams(max_new_tokens=24))
    total = SpeculativeStats()
    for p, ref in zip(prompts, greedy, strict=True):
        out, st = speculative_generate(m, p, 24)
        assert out == ref
        _check_stats(st, n_future - 1, len(out), eos=False)
        total.add(st)
    assert total.proposed > 0


def _copying_model() -> MTPTransformer:
    """A model whose heads all predict "same token as the input": drafts always accepted."""
    m = _model(4)
    with torch.no_grad():
        for block in [*m.layers, *m.extra_heads]:
            block.attention.wo.weight.zero_()
            block.feed_forward.w2.weight.zero_()
        # every block is now the identity; a dominant diagonal makes argmax_v <e_x, e_v> = x
        m.tok_embeddings.weight.add_(torch.eye(VOCAB, 32) * 10)
        m.output.weight.copy_(m.tok_embeddings.weight)
    return m


def test_perfect_drafts_give_n_tokens_per_forward():
    m = _copying_model()
    prompt = [5, 9, 11]
    greedy = generate(m, [prompt], SamplingParams(max_new_tokens=21))[0]
    assert greedy == [11] * 21
    out, st = speculative_generate(m, prompt, 21)
    assert out == greedy
    assert st.acceptance_rate == 1.0
    assert st.forwards == 1 + 5 and st.tokens_per_forward == pytest.approx(21 / 6)
    # EOS inside an accepted block stops the output there
    out, st = speculative_generate(m, prompt, 21, eos_id=11)
    assert out == [] and st.tokens == 1 and st.forwards == 1


def test_n_draft_zero_is_plain_greedy_and_eos_stops():
    m = _model()
    prompts = _prompts(6, seed=3)
    greedy = generate(m, prompts, SamplingParams(max_new_tokens=16))
    eos = greedy[0][5]
    with_eos = generate(m, prompts, SamplingParams(max_new_tokens=16), eos_id=eos)
    for p, ref, ref_eos in zip(prompts, greedy, with_eos, strict=True):
        out, st = speculative_generate(m, p, 16, n_draft=0)
        assert out == ref and st.forwards == 16 and st.proposed == 0
        out, st = speculative_generate(m, p, 16, eos_id=eos)
        assert out == ref_eos
        _check_stats(st, 3, len(out), eos=len(out) < 16)
    with pytest.raises(ValueError, match="n_draft"):
        speculative_generate(m, prompts[0], 4, n_draft=4)


def test_speculative_equals_greedy_on_micro_policy(micro_storage: Path):
    from weighted_mtp.data.collate import encode_prompt
    from weighted_mtp.data.records import read_records
    from weighted_mtp.training.checkpoint import load_policy

    model, tok = load_policy(micro_storage / "models" / "micro-mtp")
    data = micro_storage / "datasets" / "synthetic" / "processed" / "valid.jsonl"
    records = list(read_records(data))[::7][:30]
    assert len(records) == 30
    total = SpeculativeStats()
    prompts = [encode_prompt(r, tok) for r in records]
    greedy = generate(model, prompts, SamplingParams(max_new_tokens=24), tok.eos_id)
    for p, ref in zip(prompts, greedy, strict=True):
        out, st = speculative_generate(model, p, 24, tok.eos_id)
        assert out == ref
        total.add(st)
    assert total.proposed > 0 and 0.0 <= total.acceptance_rate <= 1.0
    assert total.tokens_per_forward >= 1.0
