"""The Meta-layout MTP transformer: layout, RoPE, masks, GQA, checkpointing, KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.models import tiny_mtp
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer


def _model(n_future: int = 3, seed: int = 0, **kw) -> MTPTransformer:
    return tiny_mtp(seed, n_future_tokens=n_future, **kw)


def test_ffn_width_rule_and_layout():
    assert ModelArgs(dim=4096, multiple_of=256).ffn_hidden_dim == 11008
    assert ModelArgs(dim=8192, multiple_of=4096, ffn_dim_multiplier=1.3).ffn_hidden_dim == 28672
    m = _model(n_future=4, n_layers=7)
    assert len(m.layers) == 4 and len(m.extra_heads) == 3 and m.n_future_tokens == 4
    assert m.head_blocks()[0] is m.layers[-1] and m.head_blocks()[1:] == list(m.extra_heads)
    keys = set(m.state_dict())
    assert {
        "tok_embeddings.weight",
        "norm.weight",
        "output.weight",
        "layers.3.attention.wk.weight",
        "extra_heads.2.feed_forward.w3.weight",
        "extra_heads.0.ffn_norm.weight",
    } <= keys
    assert m.layers[0].attention.wk.weight.shape == (16, 32)  # 2 kv heads x head_dim 8


def _meta_block_reference(block, x: torch.Tensor, theta: float, n_heads: int, n_kv: int):
    """Meta's llama block, written as in model.py (complex RoPE, repeat_kv, explicit softmax)."""
    b, s, d = x.shape
    hd = d // n_heads
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    freqs_cis = torch.polar(torch.ones(s, hd // 2), torch.outer(torch.arange(s).float(), freqs))

    def rope(t):
        tc = torch.view_as_complex(t.float().reshape(*t.shape[:-1], -1, 2))
        return torch.view_as_real(tc * freqs_cis[None, :, None, :]).flatten(3)

    def norm(mod, t):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + mod.eps) * mod.weight

    a = block.attention
    hn = norm(block.attention_norm, x)
    q = rope(a.wq(hn).view(b, s, n_heads, hd))
    k = rope(a.wk(hn).view(b, s, n_kv, hd))
    v = a.wv(hn).view(b, s, n_kv, hd)
    rep = n_heads // n_kv
    k = k[:, :, :, None, :].expand(b, s, n_kv, rep, hd).reshape(b, s, n_heads, hd)
    v = v[:, :, :, None, :].expand(b, s, n_kv, rep, hd).reshape(b, s, n_heads, hd)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(2, 3) / math.sqrt(hd)
    scores = scores + torch.full((s, s), float("-inf")).triu(1)
    out = (F.softmax(scores.float(), dim=-1) @ v).transpose(1, 2).reshape(b, s, -1)
    h = x + a.wo(out)
    f = block.feed_forward
    hf = norm(block.ffn_norm, h)
    return h + f.w2(F.silu(f.w1(hf)) * f.w3(hf))


def test_block_matches_meta_reference():
    m = _model()
    x = torch.randn(2, 9, 32)
    ctx = m.context(9, x.device)
    ours = m.layers[0](x, ctx)
    ref = _meta_block_reference(m.layers[0], x, 1000.0, 4, 2)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_forward_heads_are_parallel_on_the_trunk():
    m = _model()
    ids = torch.randint(0, 61, (2, 7))
    logits = m(ids)
    assert logits.shape == (2, 7, 3, 61)
    h = m.trunk(ids)
    for k, block in enumerate(m.head_blocks()):
        want = m.output(m.norm(block(h, m.context(7, h.device))))
        torch.testing.assert_close(logits[:, :, k], want)


def test_padding_masks():
    m = _model()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(3, 61, (5,), generator=g), torch.randint(3, 61, (8,), generator=g)
    alone_a, alone_b = m(a[None])[0], m(b[None])[0]
    right = torch.zeros(2, 8, dtype=torch.long)
    right[0, :5], right[1] = a, b
    rmask = (torch.arange(8) < torch.tensor([[5], [8]])).long()
    out = m(right, rmask)
    torch.testing.assert_close(out[0, :5], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], alone_b, atol=1e-5, rtol=1e-5)
    # left padding takes the explicit-mask path; RoPE is relative, so values agree too
    left = torch.zeros(2, 8, dtype=torch.long)
    left[0, 3:], left[1] = a, b
    lmask = (torch.arange(8) >= torch.tensor([[3], [0]])).long()
    out = m(left, lmask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 3:], alone_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], alone_b, atol=1e-5, rtol=1e-5)


def test_right_padding_is_skipped_with_the_same_values_and_gradients():
    """A right-padded batch's blocks project only the real tokens (``ctx.rows``); the
    MTP loss and its gradients equal those of each sequence alone."""
    from weighted_mtp.training.losses import backward_trunk, mtp_loss, mtp_targets

    m = _model()
    g = torch.Generator().manual_seed(2)
    lens = [7, 12, 3]
    ids = torch.zeros(3, 12, dtype=torch.long)
    mask = torch.arange(12) < torch.tensor(lens)[:, None]
    for i, n in enumerate(lens):
        ids[i, :n] = torch.randint(3, 61, (n,), generator=g)
    ctx = m.context(12, ids.device, mask)
    assert ctx.mask is None and ctx.rows is not None and len(ctx.rows) == sum(lens)
    assert m.context(12, ids.device, torch.ones_like(mask)).rows is None  # nothing to skip
    targets = mtp_targets(ids.masked_fill(~mask, -100), m.n_future_tokens)
    h = m.trunk(ids, mask)
    out = mtp_loss(m, h, mask, targets)
    backward_trunk(h, out)
    batched = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    total = torch.zeros(())
    for i, n in enumerate(lens):
        hi = m.trunk(ids[i : i + 1, :n])
        oi = mtp_loss(m, hi, None, targets[i : i + 1, :n], denominator=out.n_valid)
        backward_trunk(hi, oi)
        total += oi.loss
    torch.testing.assert_close(out.loss, total, atol=1e-6, rtol=1e-5)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, batched[n], atol=1e-6, rtol=1e-4)


def test_activation_checkpointing_same_grads():
    m = _model()
    ids = torch.randint(0, 61, (2, 9))

    def grads(flag: bool) -> dict[str, torch.Tensor]:
        m.zero_grad(set_to_none=True)
        m.set_activation_checkpointing(flag)
        F.cross_entropy(
            m(ids).flatten(0, 2),
            torch.randint(0, 61, (2 * 9 * 3,), generator=torch.Generator().manual_seed(0)),
        ).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    for n in plain:
        torch.testing.assert_close(plain[n], ckpt[n], atol=1e-6, rtol=1e-5)


def test_kv_cache_incremental_equals_full_forward():
    m = _model()
    ids = torch.randint(0, 61, (2, 10))
    full = m(ids)
    caches = m.new_kv_caches(2, 16)
    n_trunk = len(m.layers) - 1
    got = []
    with torch.no_grad():
        for start, end in ((0, 4), (4, 5), (5, 10)):
            ctx = m.context(end - start, ids.device, start_pos=start)
            h = m.trunk(ids[:, start:end], ctx=ctx, caches=caches[:n_trunk])
            heads = [
                m.output(m.head_hidden(k, h, ctx=ctx, cache=caches[n_trunk + k]))
                for k in range(m.n_future_tokens)
            ]
            got.append(torch.stack(heads, dim=2))
    torch.testing.assert_close(torch.cat(got, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_dtype(dtype):
    m = MTPTransformer(_model().args, dtype=dtype)
    assert all(p.dtype == dtype for p in m.parameters())
    out = m(torch.randint(0, 61, (1, 5)))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_args_check_rejects_bad_params():
    with pytest.raises(ValueError, match="n_kv_heads"):
        _model(n_kv_heads=3)
    with pytest.raises(ValueError, match="vocab_size"):
        _model(vocab_size=-1)
