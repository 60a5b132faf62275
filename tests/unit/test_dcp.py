"""torch.distributed.checkpoint (DCP) policy directories outside training: evaluation and
export read the whole model in one process, without a process group; the ``.metadata``
pickle is read through an allow-list (a file naming code is refused, never run)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from weighted_mtp.errors import UserError
from weighted_mtp.export import export_hf
from weighted_mtp.models.formats import load_model
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.training.checkpoint import load_policy

ARGS = ModelArgs(dim=32, n_layers=3, n_heads=2, vocab_size=64, multiple_of=16, n_future_tokens=2)


def _dcp_policy(path: Path) -> MTPTransformer:
    model = MTPTransformer(ARGS)
    model.init_weights(torch.Generator().manual_seed(0))
    sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    dcp.save(sd, checkpoint_id=str(path), no_dist=True)
    (path / "params.json").write_text(json.dumps(ARGS.to_dict()))
    return model


def test_a_dcp_policy_loads_and_exports_in_one_process(tmp_path: Path) -> None:
    model = _dcp_policy(tmp_path / "dcp")
    (tmp_path / "dcp" / "tokenizer.model").write_bytes(b"sp")
    loaded = load_model(tmp_path / "dcp", torch.float32)
    for (name, p), q in zip(loaded.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q.to(torch.bfloat16).float()), name
    # evaluate's path (a model directory, not a training checkpoint)
    with pytest.raises(UserError, match="tokenizer"):  # b"sp" is not a SentencePiece model
        load_policy(tmp_path / "dcp")
    out = export_hf(tmp_path / "dcp", tmp_path / "hf")
    from safetensors.torch import load_file

    hf = load_file(out / "model.safetensors")
    assert torch.equal(hf["lm_head.weight"], model.output.weight.to(torch.bfloat16))
    assert (out / "tokenizer.model").read_bytes() == b"sp"


class _RunsCode:
    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (os.environ["MARKER"],))


def test_dcp_metadata_naming_code_is_refused(tmp_path: Path, monkeypatch) -> None:
    _dcp_policy(tmp_path / "dcp")
    marker = tmp_path / "ran"
    monkeypatch.setenv("MARKER", str(marker))
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(UserError, match="refusing to load posix.mkdir"):
        load_model(tmp_path / "dcp")
    assert not marker.exists()
