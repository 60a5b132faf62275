"""Sharded loading (FSDP2, 2 gloo processes): each rank builds the policy on the meta
device, shards it and reads only its rows; the result equals a full load, for Meta
directories (one file or model-parallel shards), safetensors and torch.distributed.checkpoint
(DCP) directories, in the checkpoint's dtype or cast to float32 master weights.

Run as a script (``torchrun ... test_sharded_load.py DIR``) this module is the worker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import free_port  # noqa: E402
from test_fsdp import ENV, TORCHRUN  # noqa: E402

from weighted_mtp.models.formats import save_meta_dir, save_safetensors  # noqa: E402
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer  # noqa: E402

# vocab 61: embedding and output rows not divisible by the 2 ranks (uneven shards)
ARGS = ModelArgs(dim=40, n_layers=4, n_heads=4, vocab_size=61, multiple_of=16, n_future_tokens=2)


def _split_meta(model: MTPTransformer, path: Path) -> None:
    """Two Meta model-parallel shards (fairscale layout), as Meta's larger releases."""
    from weighted_mtp.models.formats import shard_dim

    save_meta_dir(model, path)
    sd = torch.load(path / "consolidated.pth")
    (path / "consolidated.pth").unlink()
    for r in range(2):
        part = {}
        for k, v in sd.items():
            d = shard_dim(k)
            part[k] = v.clone() if d is None else v.chunk(2, dim=d)[r].clone()
        torch.save(part, path / f"consolidated.0{r}.pth")


def test_sharded_load_equals_full_load(tmp_path: Path) -> None:
    model = MTPTransformer(ARGS)
    model.init_weights(torch.Generator().manual_seed(0))
    save_meta_dir(model, tmp_path / "meta")
    _split_meta(model, tmp_path / "meta2")
    _save_dcp(model, tmp_path / "dcp_bf16")
    save_safetensors(model.to(torch.bfloat16), tmp_path / "st_bf16")
    cmd = [*TORCHRUN, f"--master_port={free_port()}", __file__, str(tmp_path)]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "result.json").read_text())
    assert out == {
        "meta": {"equal": True, "sharded": True, "dtype": "torch.float32"},
        "meta2": {"equal": True, "sharded": True, "dtype": "torch.float32"},
        "st_bf16": {"equal": True, "sharded": True, "dtype": "torch.float32"},
        "dcp_bf16": {"equal": True, "sharded": True, "dtype": "torch.float32"},
    }


def _save_dcp(model: MTPTransformer, path: Path) -> None:
    """A bf16 DCP checkpoint (one process wrote it) with params.json beside it."""
    import torch.distributed.checkpoint as dcp

    sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    dcp.save(sd, checkpoint_id=str(path), no_dist=True)
    (path / "params.json").write_text(json.dumps(model.args.to_dict()))


def test_dcp_full_load_one_process(tmp_path: Path) -> None:
    """Without a process group (one process, ddp): the full tensors, cast on load."""
    from weighted_mtp.models.reader import CheckpointReader, assign_weights, meta_model

    model = MTPTransformer(ARGS)
    model.init_weights(torch.Generator().manual_seed(0))
    _save_dcp(model, tmp_path / "dcp")
    reader = CheckpointReader(tmp_path / "dcp")
    assert reader.check() == ARGS and reader.dcp
    loaded = meta_model(reader, torch.float32)
    assign_weights(loaded, reader, torch.device("cpu"))
    for (name, p), q in zip(loaded.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q.to(torch.bfloat16).float()), name


def _worker(root: str) -> None:
    import torch.distributed as tdist

    from weighted_mtp.distributed import env_info
    from weighted_mtp.models.formats import load_model
    from weighted_mtp.models.reader import CheckpointReader, meta_model
    from weighted_mtp.training.parallel import Sharded

    tdist.init_process_group("gloo")
    cpu = torch.device("cpu")
    results = {}
    for name in ("meta", "meta2", "st_bf16", "dcp_bf16"):
        path = Path(root) / name
        reader = CheckpointReader(path)
        reader.check()
        model = meta_model(reader, torch.float32)  # trained policy: fp32 master weights
        Sharded(env_info(), cpu, torch.bfloat16).load(model, reader)
        # the DCP copy holds the safetensors copy's bf16 values
        full = load_model(Path(root) / name.replace("dcp", "st"), torch.float32)
        results[name] = {
            "equal": all(
                torch.equal(p.full_tensor(), q)
                for p, q in zip(model.parameters(), full.parameters(), strict=True)
            ),
            "sharded": all(p.to_local().shape[0] < p.shape[0] for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype),
        }
    if tdist.get_rank() == 0:
        (Path(root) / "result.json").write_text(json.dumps(results))
    tdist.barrier()
    tdist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
