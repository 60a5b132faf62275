"""KV-cached sampling from head 0: greedy, EOS, top-p / temperature, left-padded batches."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import tiny_mtp
from weighted_mtp.evaluation.generate import (
    SamplingParams,
    choose,
    filter_top_p,
    generate,
    generate_batched,
)
from weighted_mtp.models.mtp import MTPTransformer

VOCAB = 61


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int = 0) -> MTPTransformer:
    return tiny_mtp(seed, vocab_size=VOCAB).eval()


def _prompts(n: int, seed: int = 1, max_len: int = 12) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(3, VOCAB, (k,), generator=g).tolist() for k in lens]


def _full_forward_greedy(model: MTPTransformer, prompt: list[int], steps: int) -> list[int]:
    """Reference: re-run the whole sequence every step, take head 0's argmax at the end."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids]))[0, -1, 0].argmax()))
    return ids[len(prompt) :]


def test_greedy_equals_argmax_of_full_forward():
    m = _model()
    prompts = _prompts(8)
    got = generate(m, prompts, SamplingParams(max_new_tokens=15))
    for p, g in zip(prompts, got, strict=True):
        assert g == _full_forward_greedy(m, p, 15)


def test_batch_of_differing_lengths_equals_one_by_one():
    m = _model(seed=3)
    prompts = _prompts(12, seed=4, max_len=20)
    assert len({len(p) for p in prompts}) > 3
    params = SamplingParams(max_new_tokens=12)
    batch = generate(m, prompts, params)
    assert batch == [generate(m, [p], params)[0] for p in prompts]
    sampled = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9)
    seeds = list(range(100, 112))
    batch = generate(m, prompts, sampled, seeds=seeds)
    alone = [generate(m, [p], sampled, seeds=[s])[0] for p, s in zip(prompts, seeds, strict=True)]
    assert batch == alone
    # generate_batched sorts by length into chunks and restores the order
    assert generate_batched(m, prompts, sampled, seeds=seeds, batch_size=5) == alone


def test_eos_stops_each_row():
    m = _model()
    prompts = _prompts(6, seed=7)
    free = generate(m, prompts, SamplingParams(max_new_tokens=10))
    eos = free[0][3]  # a token row 0 emits at step 4: make it the EOS
    got = generate(m, prompts, SamplingParams(max_new_tokens=10), eos_id=eos)
    for row, ref in zip(got, free, strict=True):
        cut = ref.index(eos) if eos in ref else len(ref)
        assert row == ref[:cut]
    assert len(got[0]) <= 3 and eos not in got[0]


def test_sampling_deterministic_for_a_seed_and_varies_with_it():
    m = _model()
    prompts = _prompts(4, seed=2)
    params = SamplingParams(max_new_tokens=20, temperature=1.5, top_p=0.95)
    a = generate(m, prompts, params, seeds=[1, 2, 3, 4])
    b = generate(m, prompts, params, seeds=[1, 2, 3, 4])
    c = generate(m, prompts, params, seeds=[5, 6, 7, 8])
    assert a == b
    assert a != c
    assert a != generate(m, prompts, SamplingParams(max_new_tokens=20))
    with pytest.raises(ValueError, match="seed"):
        generate(m, prompts, params)


def test_tiny_top_p_and_near_zero_temperature_are_greedy():
    m = _model()
    prompts = _prompts(5, seed=9)
    greedy = generate(m, prompts, SamplingParams(max_new_tokens=10))
    seeds = list(range(5))
    nucleus = SamplingParams(max_new_tokens=10, temperature=2.0, top_p=1e-9)
    assert generate(m, prompts, nucleus, seeds=seeds) == greedy
    cold = SamplingParams(max_new_tokens=10, temperature=1e-4)
    assert generate(m, prompts, cold, seeds=seeds) == greedy


def test_filter_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.97, 0.01, 0.01, 0.01]])
    out = filter_top_p(probs, 0.7)
    torch.testing.assert_close(out[0], torch.tensor([0.0, 0.5, 0.0, 0.25]) / 0.75)
    torch.testing.assert_close(out[1], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(filter_top_p(probs, 1.0), probs)


def test_choose_matches_the_distribution():
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    params = SamplingParams(temperature=1.0)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([choose(logits, params, [g]) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.5, 0.3]), atol=0.03, rtol=0)


def test_sampling_params_are_checked():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
