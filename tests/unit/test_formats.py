"""Meta directory / safetensors formats: round trips, shards, mmap, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.models import TINY, tiny_mtp
from weighted_mtp.errors import UserError
from weighted_mtp.models.formats import (
    load_model,
    save_meta_dir,
    save_safetensors,
    shard_dim,
)
from weighted_mtp.models.mtp import MTPTransformer

ARGS = {**TINY, "n_layers": 4, "vocab_size": 50, "n_future_tokens": 2, "rope_theta": 500.0}


def _model(dtype=torch.float32) -> MTPTransformer:
    return tiny_mtp(std=0.02, dtype=dtype, **ARGS)


def _mapped_file(addr: int) -> str | None:
    """The file mapped at address ``addr`` in this process (Linux /proc/self/maps)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= addr < hi:
            return parts[5] if len(parts) == 6 else None
    return None


def _same(a: MTPTransformer, b: MTPTransformer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trips_bit_identical(tmp_path: Path, dtype):
    m = _model(dtype)
    save_meta_dir(m, tmp_path / "meta")
    save_safetensors(m, tmp_path / "st")
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params["n_future_tokens"] == 2 and params["n_kv_heads"] == 2
    assert (tmp_path / "st" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    a = load_model(tmp_path / "meta", dtype)
    b = load_model(tmp_path / "st", dtype)
    c = load_model(tmp_path / "st" / "model.safetensors", dtype)  # params in metadata
    for other in (
        a,
        b,
        c,
        load_model(tmp_path / "meta", dtype),
        load_model(tmp_path / "st", dtype),
    ):
        _same(m, other)
        assert all(p.requires_grad and p.device.type == "cpu" for p in other.parameters())
    x = torch.randint(0, 50, (2, 6))
    assert torch.equal(m(x), a(x))


def test_load_is_memory_mapped_and_casts_on_request(tmp_path: Path):
    m = _model()
    save_meta_dir(m, tmp_path)
    a = load_model(tmp_path, "float32")
    # assign=True adopts the mmap'ed tensors: parameters live inside the file's mapping
    for p in (a.norm.weight, a.output.weight, a.layers[1].attention.wq.weight):
        assert _mapped_file(p.data_ptr()) == str(tmp_path / "consolidated.pth")
    b = load_model(tmp_path, "bfloat16")
    assert b.output.weight.dtype == torch.bfloat16
    torch.testing.assert_close(b.output.weight.float(), m.output.weight, atol=1e-2, rtol=1e-2)


def test_params_json_extra_keys_and_vocab_minus_one(tmp_path: Path):
    m = _model()
    save_meta_dir(m, tmp_path)
    params = json.loads((tmp_path / "params.json").read_text())
    params.update(vocab_size=-1, max_seq_len=2048)
    (tmp_path / "params.json").write_text(json.dumps(params))
    a = load_model(tmp_path)
    assert a.args.vocab_size == 50 and a.args.extra == {"max_seq_len": 2048}
    assert a.args.to_dict()["max_seq_len"] == 2048


def test_sharded_meta_dir(tmp_path: Path):
    m = _model()
    save_meta_dir(m, tmp_path)
    (tmp_path / "consolidated.pth").unlink()
    sd = m.state_dict()
    shards = [{}, {}]
    for k, v in sd.items():
        d = shard_dim(k)
        for i in range(2):
            shards[i][k] = v.clone() if d is None else v.chunk(2, dim=d)[i].clone()
    assert shards[0]["layers.0.attention.wo.weight"].shape == (32, 16)
    assert shards[0]["tok_embeddings.weight"].shape == (50, 16)
    for i, s in enumerate(shards):
        torch.save(s, tmp_path / f"consolidated.{i:02d}.pth")
    _same(m, load_model(tmp_path))


def test_mismatch_errors_list_keys(tmp_path: Path):
    m = _model()
    save_meta_dir(m, tmp_path)
    params = json.loads((tmp_path / "params.json").read_text())
    # wrong n_future_tokens: 3 heads claimed, checkpoint has 2
    (tmp_path / "params.json").write_text(json.dumps({**params, "n_future_tokens": 3}))
    with pytest.raises(UserError) as e:
        load_model(tmp_path)
    msg = str(e.value)
    assert "n_future_tokens 2" in msg and "missing keys" in msg and "extra_heads.1." in msg
    assert "unexpected keys" in msg and "layers.2.attention.wq.weight" in msg
    assert str(tmp_path) in msg
    # wrong dim -> shape mismatch listing the keys
    (tmp_path / "params.json").write_text(json.dumps({**params, "multiple_of": 64}))
    with pytest.raises(UserError, match=r"shape keys .*feed_forward\.w1\.weight"):
        load_model(tmp_path)
    # vocabulary disagreeing with the tokenizer
    (tmp_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(UserError, match="vocab_size 50 but the tokenizer has 32000"):
        load_model(tmp_path, vocab_size=32000)
    # unexpected key in the file
    sd = dict(m.state_dict(), **{"rope.freqs": torch.zeros(4)})
    torch.save(sd, tmp_path / "consolidated.pth")
    with pytest.raises(UserError, match=r"unexpected keys \(1\): rope\.freqs"):
        load_model(tmp_path)


def test_missing_files_are_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="params.json"):
        load_model(tmp_path)
    (tmp_path / "params.json").write_text(json.dumps(ARGS))
    with pytest.raises(UserError, match="no consolidated.pth"):
        load_model(tmp_path)
