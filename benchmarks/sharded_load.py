"""Host memory of loading the policy under FSDP: sharded loading vs a full load per rank.

Writes a bf16 checkpoint (Meta ``consolidated.pth`` and safetensors; default dim 1024,
8 blocks, vocab 32000), then starts 2 gloo processes per mode and prints each rank's
peak resident memory (VmHWM, minus what the process held before loading) next to the
checkpoint size:

- ``sharded``: the training loop's path (meta device -> ``fully_shard`` -> read only this
  rank's rows from the memory-mapped file, cast to float32 master weights);
- ``full``: every rank loads the whole model (memory-mapped), casts it to float32 and then
  shards it (the path before sharded loading).

On CPU the float32 shard itself (what a GPU run keeps in device memory) is host memory
too, so the table also prints peak minus the rank's own shard: the host memory a GPU run
needs. glibc is told to return freed blocks at once (``MALLOC_MMAP_THRESHOLD_``), so the
peak counts live memory only; it includes the checkpoint pages the rank maps (its rows;
shared page cache) and FSDP's initialising forward (one all-gathered unit at a time, plus
``norm``/``output``: device memory on a GPU).

Usage: python benchmarks/sharded_load.py [--dim 1024] [--layers 8] [--vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def _status() -> dict[str, int]:
    """VmHWM (peak) and VmRSS of this process in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _worker(path: str, mode: str, out: str) -> None:
    import torch.distributed as tdist

    from weighted_mtp.distributed import env_info
    from weighted_mtp.models.formats import load_model
    from weighted_mtp.models.reader import CheckpointReader, meta_model
    from weighted_mtp.training.parallel import Sharded

    tdist.init_process_group("gloo")
    cpu = torch.device("cpu")
    par = Sharded(env_info(), cpu, torch.bfloat16)
    before = _status()
    if mode == "sharded":
        reader = CheckpointReader(path)
        reader.check()
        model = meta_model(reader, torch.float32)
        par.load(model, reader)
        del reader
    else:
        model = load_model(path, torch.bfloat16, cpu).float()
        par.prepare(model)
    after = _status()
    local = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    rows = [None] * tdist.get_world_size()
    tdist.all_gather_object(rows, {"before": before, "after": after, "local_bytes": local})
    if tdist.get_rank() == 0:
        Path(out).write_text(json.dumps(rows))
    tdist.barrier()
    tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    a = ap.parse_args()

    from weighted_mtp.models.formats import save_meta_dir, save_safetensors
    from weighted_mtp.models.mtp import ModelArgs, MTPTransformer

    args = ModelArgs(
        dim=a.dim, n_layers=a.layers, n_heads=a.dim // 64, vocab_size=a.vocab, n_future_tokens=2
    )
    gib = 1 << 30
    with tempfile.TemporaryDirectory() as tmp:
        model = MTPTransformer(args, dtype=torch.bfloat16)
        n_params = sum(p.numel() for p in model.parameters())
        save_meta_dir(model, Path(tmp) / "meta")
        save_safetensors(model, Path(tmp) / "st")
        del model
        size = (Path(tmp) / "meta" / "consolidated.pth").stat().st_size
        print(f"model: {n_params / 1e6:.0f}M parameters, bf16 checkpoint {size / gib:.3f} GiB, "
              "float32 master weights, 2 ranks")  # fmt: skip
        print(
            f"{'format':<8}{'mode':<9}{'rank peak GiB':>14}{'x ckpt':>8}{'own shard':>11}"
            f"{'peak - shard':>14}{'x ckpt':>8}"
        )
        for fmt in ("meta", "st"):
            for mode in ("sharded", "full"):
                out = Path(tmp) / "out.json"
                cmd = [
                    str(Path(sys.executable).with_name("torchrun")),
                    "--nproc_per_node=2",
                    f"--master_port={_free_port()}",
                    __file__,
                    "--worker",
                    str(Path(tmp) / fmt),
                    mode,
                    str(out),
                ]
                env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
                subprocess.run(cmd, check=True, env=env, capture_output=True)
                for r, row in enumerate(json.loads(out.read_text())):
                    peak = row["after"]["VmHWM"] - row["before"]["VmRSS"]
                    host = peak - row["local_bytes"]
                    print(
                        f"{fmt:<8}{mode:<9}{peak / gib:>14.3f}{peak / size:>8.2f}"
                        f"{row['local_bytes'] / gib:>11.3f}{host / gib:>14.3f}{host / size:>8.2f}"
                        f"  (rank {r})"
                    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(*sys.argv[2:5])
    else:
        main()
