"""LoRA runs end to end on the micro assets: every trained stage; the checkpoint holds
peft's adapter files and reloads (load_policy, evaluate, speculative decoding, HF export
merged and as base + peft adapter); SIGKILL + resume is bit-exact; fsdp on 2 gloo ranks
== 1 process."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from weighted_mtp import app, export
from weighted_mtp.__main__ import main
from weighted_mtp.evaluation.speculative import speculative_generate
from weighted_mtp.models import lora
from weighted_mtp.models.formats import load_model
from weighted_mtp.training import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import free_port  # noqa: E402
from test_fsdp import TORCHRUN, _train  # noqa: E402
from test_resume import THIS, train_subprocess  # noqa: E402

LORA = ["models.policy.lora.enabled=true", "models.policy.lora.r=4"]


def final(cfg) -> Path:
    return Path(cfg.checkpoint.save_dir) / "checkpoint_final"


def test_lora_checkpoint_reloads_merges_evaluates_decodes_exports(make_cfg, tmp_path) -> None:
    cfg = make_cfg("baseline", *LORA, "training.learning_rate=1e-2", "data_sampling.n_samples=4",
                   "models.policy.lora.target_modules=[wq,wk,wv,w2,output]")  # fmt: skip
    app.run(cfg)
    path = final(cfg)
    assert {lora.CONFIG_FILE, lora.WEIGHTS_FILE} <= {p.name for p in path.iterdir()}
    state = ckpt.load(path)
    assert state["modules"] == {}  # no policy weights: only adapters
    assert any(t.abs().sum() > 0 for k, t in state["adapter"].items() if "lora_B" in k)
    assert main(["checkpoint", "verify", str(path)]) == 0  # the adapter files are in the manifest

    adapted, tok = ckpt.load_policy(path, merge=False)
    merged, _ = ckpt.load_policy(path)
    base = load_model(cfg.models.policy.path)
    frozen, _ = lora.split(adapted)
    assert all(torch.equal(frozen[k], v) for k, v in base.state_dict().items())  # base untouched
    ids = torch.tensor([tok.encode("def solve(n):\n    return n * 2\n", bos=True)])
    with torch.no_grad():
        want = adapted(ids)
        assert (want - base(ids)).abs().max() > 1e-3
        torch.testing.assert_close(merged(ids), want, atol=1e-4, rtol=0)
    prompt = ids[0, :8].tolist()
    drafted, stats = speculative_generate(merged, prompt, 12)
    assert drafted == speculative_generate(merged, prompt, 12, n_draft=0)[0] and stats.forwards

    data = Path(cfg.dataset.validation).with_name("test.jsonl")
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(path), "--data", str(data), "--limit", "2",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0  # fmt: skip
    assert (out / "summary.json").is_file()

    hf, pair = tmp_path / "hf", tmp_path / "pair"
    ns = argparse.Namespace(
        checkpoint=str(path), to="hf", out=str(hf), dtype=None, adapter=str(pair)
    )
    assert export.run(ns) == 0
    with torch.no_grad():
        head0 = want[:, :, 0]
        got = LlamaForCausalLM.from_pretrained(hf, local_files_only=True)(input_ids=ids).logits
        torch.testing.assert_close(got, head0, atol=1e-4, rtol=0)
        hf_base = LlamaForCausalLM.from_pretrained(pair / "base", local_files_only=True)
        peft_hf = PeftModel.from_pretrained(hf_base, str(pair / "adapter")).eval()
        torch.testing.assert_close(peft_hf(input_ids=ids).logits, head0, atol=1e-4, rtol=0)


def test_verifiable_and_rho1_train_adapters(make_cfg, tmp_path) -> None:
    small = ["training.learning_rate=1e-2", "data_sampling.n_samples=4"]
    # LoRA trains no critic (the policy is frozen); the linear head the verifiable run uses
    critic_cfg = make_cfg("critic", *small, "models.value_head.type=linear")
    app.run(critic_cfg)
    critic = final(critic_cfg)
    head = ckpt.load_value_head(critic)
    common = [*LORA, *small]
    ver = make_cfg("verifiable", *common, f"experiment.critic_checkpoint={critic}")
    rho = make_cfg("rho1", *common, "training.k_percent=0.5")
    for cfg in (ver, rho):
        app.run(cfg)
        state = ckpt.load(final(cfg))
        assert "policy" not in state["modules"]
        assert any(t.abs().sum() > 0 for k, t in state["adapter"].items() if "lora_B" in k)
    # verifiable: the value head is trained in full next to the adapters
    trained = ckpt.load(final(ver))["modules"]["value_head"]
    assert not torch.equal(trained["net.weight"], head.state_dict()["net.weight"])


def test_sigkill_resume_is_exact_and_fsdp_equals_one_process(make_cfg, tmp_path) -> None:
    common = [
        *LORA,
        "models.policy.lora.target_modules=[wq,wv,w1,output]",  # output: an FSDP unit
        "data_sampling.n_samples=8",
        "training.learning_rate=1e-3",
        "training.warmup_ratio=0.25",
        "training.eval_samples=4",
        "checkpoint.save_checkpoint_every=0.25",  # every step of 4
        "checkpoint.save_total_limit=1",
    ]

    def cfg(name: str, *extra: str):
        return make_cfg("baseline", *common, f"checkpoint.save_dir={tmp_path}/{name}", *extra)

    ref = cfg("ref")
    app.run(ref)
    want = ckpt.load(final(ref))

    kill = [f"weighting._target_={THIS}.KillAtCall", "+weighting.kill_at=3"]
    assert train_subprocess(cfg("run", *kill), tmp_path, "run").returncode == -signal.SIGKILL
    assert [p.name for p in ckpt.periodic_checkpoints(tmp_path / "run")] == ["checkpoint_step2"]
    assert app.run(cfg("run", "checkpoint.resume=auto"))["step"] == 4
    got = ckpt.load(tmp_path / "run" / "checkpoint_final")["adapter"]
    assert all(torch.equal(want["adapter"][k], got[k]) for k in got)  # bit-exact

    # 2 ranks of batch 1 under fsdp (sharded frozen base, replicated adapters) == batch 2
    launcher = [*TORCHRUN, f"--master_port={free_port()}"]
    fsdp = cfg("fsdp", "training.batch_size=1", "runtime.distributed=fsdp")
    _train(fsdp, launcher, tmp_path, "fsdp")
    other = ckpt.load(final(fsdp))
    diff = max((want["adapter"][k] - t).abs().max().item() for k, t in other["adapter"].items())
    assert other["adapter"].keys() == want["adapter"].keys() and diff < 1e-5
    assert abs(other["val"]["val/mtp_ce"] - want["val"]["val/mtp_ce"]) < 1e-5
