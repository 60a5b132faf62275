"""LoRA through peft on tiny MTP models: exact start, the parameter formula, storage
dtypes, only adapters (and a value head) train, peft's on-disk format, merge, the HF
adapter export, validation and the plan."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM

from weighted_mtp.__main__ import main
from weighted_mtp.config.loader import compose
from weighted_mtp.config.validate import ConfigValidationError, validate
from weighted_mtp.distributed import DistInfo
from weighted_mtp.models import hf, lora
from weighted_mtp.models.mtp import ModelArgs, MTPTransformer
from weighted_mtp.models.value_head import ValueHead
from weighted_mtp.training.optim import build_optimizer
from weighted_mtp.training.parallel import Replicated
from weighted_mtp.training.step import optimizer_step
from weighted_mtp.training.task import Task
from weighted_mtp.weighting.uniform import UniformWeighting

ARGS = dict(dim=32, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16,
            n_future_tokens=3)  # fmt: skip
ALL = list(lora.TARGETS)


def tiny(seed: int = 0, dtype: torch.dtype = torch.float32) -> MTPTransformer:
    m = MTPTransformer(ModelArgs(**ARGS))
    m.init_weights(torch.Generator().manual_seed(seed), std=0.1)
    return m.to(dtype)


def adapted(targets=ALL, r: int = 4, trained: bool = True, **kw) -> MTPTransformer:
    """A tiny adapted model whose lora_B is non-zero (as after training)."""
    m = tiny(**kw)
    lora.apply(m, lora.lora_config(r, 8, 0.0, targets), seed=1)
    if trained:
        with torch.no_grad():
            for layer in lora.layers(m):
                layer.lora_B[lora.ADAPTER].weight.normal_(0, 0.2)
    return m.eval()


def ids() -> torch.Tensor:
    return torch.randint(0, ARGS["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(3))


def test_starts_equal_to_the_base_with_the_formula_count_and_storage_dtypes() -> None:
    base = tiny(dtype=torch.bfloat16)
    m = adapted(trained=False, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(m(ids()), base(ids()))  # lora_B = 0: exactly the base
    trainable, frozen = lora.count_parameters(m)
    # 4 blocks x (wq 32->32, wk 32->16, wv 32->16, wo 32->32, w1/w3 32->96, w2 96->32)
    # + output 32->64, each r x (in + out)
    per_block = 4 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 3 * (32 + 96))
    assert trainable == lora.expected_parameters(base, 4, ALL) == 5 * per_block + 4 * (32 + 64)
    assert frozen == sum(p.numel() for p in base.parameters())
    for name, p in m.named_parameters():
        assert p.dtype == (torch.float32 if lora.is_adapter_key(name) else torch.bfloat16), name
        assert p.requires_grad == lora.is_adapter_key(name), name


@pytest.mark.parametrize("targets", [["wq", "wv", "w2"], ["output"]])  # output: frozen trunk
def test_a_step_changes_only_adapters_and_the_value_head(targets) -> None:
    m = adapted(targets=targets, trained=False).train()
    head = ValueHead(32)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    head_before = copy.deepcopy(head.state_dict())
    task = Task(True, UniformWeighting(), value_head=head, value_coef=0.5)
    params = [p for p in [*m.parameters(), *head.parameters()] if p.requires_grad]
    opt = build_optimizer(params, 1e-2, 0.0)
    batch = _batch(ids())
    cpu = torch.device("cpu")
    par = Replicated(DistInfo(), cpu, None)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(2):  # lora_B moves first (A's gradient is 0 while B = 0), then A
        optimizer_step([batch], task, m, par, opt, scaler, params, 1.0, cpu, None)
    after = m.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and changed == {k for k in after if lora.is_adapter_key(k)}
    assert not torch.equal(head.state_dict()["net.weight"], head_before["net.weight"])
    assert len(opt.state) == len(params)  # the optimizer holds nothing of the frozen base


def _batch(x: torch.Tensor):
    from weighted_mtp.data.collate import Batch

    b, s = x.shape
    return Batch(
        input_ids=x, attention_mask=torch.ones(b, s, dtype=torch.bool), labels=x.clone(),
        response_mask=torch.ones(b, s, dtype=torch.bool), reward=torch.ones(b),
        is_correct=torch.ones(b, dtype=torch.bool), difficulty=torch.zeros(b, dtype=torch.long),
        record_ids=torch.arange(b), task_ids=["t"] * b,
    )  # fmt: skip


def test_peft_format_round_trip_and_merge(tmp_path: Path) -> None:
    m = adapted()
    base, adapter = lora.split(m)
    config = m.peft_config[lora.ADAPTER]
    names = {lora.param_name(k): v for k, v in adapter.items()}
    lora.write(tmp_path, config, names)
    assert {p.name for p in tmp_path.iterdir()} == {lora.CONFIG_FILE, lora.WEIGHTS_FILE}
    with torch.no_grad():
        want = m(ids())
        # peft itself reads the directory onto the plain base model
        fresh = tiny()
        by_peft = PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
        torch.testing.assert_close(by_peft(ids()), want, atol=0, rtol=0)
        # our reader: settings and tensors back; merged == adapted
        again = tiny()
        tuner = lora.attach(again, lora.read_config(tmp_path / lora.CONFIG_FILE), adapter)
        assert lora.same_settings(config, again.peft_config[lora.ADAPTER]) == []
        torch.testing.assert_close(again(ids()), want, atol=0, rtol=0)
        merged = tuner.merge_and_unload()
        assert type(merged) is MTPTransformer and not lora.layers(merged)
        torch.testing.assert_close(merged(ids()), want, atol=1e-4, rtol=0)
    changed = lora.lora_config(8, 8, 0.1, ["wq"])
    assert lora.same_settings(config, changed) == [
        "r: 4 -> 8",
        "dropout: 0.0 -> 0.1",
        f"target_modules: {sorted(ALL)} -> ['wq']",
    ]


def test_hf_export_merged_and_base_plus_adapter_match_the_adapted_model(tmp_path: Path) -> None:
    m = adapted()  # every target, including output -> lm_head; GQA (wk has 2 kv heads)
    with torch.no_grad():
        want = m(ids())[:, :, 0]  # HF Llama = trunk + the next-token head
    base, adapter = lora.split(m)
    hf.export_hf_adapter(base, adapter, m.peft_config[lora.ADAPTER], m.args, tmp_path)
    lora.merge(m)
    hf.export_hf_state_dict(lora.split(m)[0], m.args, tmp_path / "merged")
    hf_base = LlamaForCausalLM.from_pretrained(tmp_path / "base", local_files_only=True)
    with torch.no_grad():
        plain = hf_base(input_ids=ids()).logits
        peft_hf = PeftModel.from_pretrained(hf_base, str(tmp_path / "adapter")).eval()
        got = peft_hf(input_ids=ids()).logits
        merged = LlamaForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True)
        got_merged = merged(input_ids=ids()).logits
    assert (plain - want).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_merged, want, atol=1e-4, rtol=0)
    cfg = lora.read_config(tmp_path / "adapter" / lora.CONFIG_FILE)
    assert set(cfg.target_modules) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "field", "needle"),
    [
        (["models.policy.lora.target_modules=[wq,q_proj]"], "target_modules", "'q_proj'"),
        (["models.policy.lora.target_modules=[]"], "target_modules", "is empty"),
        (["models.policy.lora.r=0"], "models.policy.lora.r", ">= 1"),
        (["models.policy.lora.alpha=0"], "models.policy.lora.alpha", "> 0"),
        (["models.policy.lora.dropout=1"], "models.policy.lora.dropout", "0 <= dropout < 1"),
        (["stage=critic", "models.policy.lora.enabled=true"], "lora.enabled", "critic stage"),
    ],
)
def test_validation_names_the_lora_field(overrides, field, needle, path_overrides) -> None:
    with pytest.raises(ConfigValidationError) as info:
        validate(compose([*path_overrides, *overrides]))
    line = next(ln for ln in str(info.value).splitlines() if field in ln)
    assert needle in line and "Fix:" in line


def test_unknown_target_module_exits_2(tmp_path: Path, path_overrides, capsys) -> None:
    from omegaconf import OmegaConf

    f = tmp_path / "c.yaml"
    OmegaConf.save(compose(path_overrides), f)
    code = main(["validate-config", "--config", str(f), "--override",
                 "models.policy.lora.target_modules=[wq,attn]"])  # fmt: skip
    assert code == 2
    assert "models.policy.lora.target_modules" in capsys.readouterr().err


def test_plan_accounts_for_adapters() -> None:
    from weighted_mtp.plan.simulate import simulate_rank

    cfg = compose(["profile=local", "dataset.max_length=16", "training.batch_size=1",
                   "models.policy.dtype=bfloat16", "models.policy.lora.enabled=true",
                   "models.policy.lora.r=2"])  # fmt: skip
    low = simulate_rank(cfg, ModelArgs(**ARGS), None, 1)
    base = sum(p.numel() for p in tiny().parameters())
    adapters = 4 * lora.expected_parameters(tiny(), 2, ["wq", "wk", "wv", "wo", "w1", "w2", "w3"])
    assert low.module_bytes["adapters"] == adapters  # float32
    assert low.module_bytes["policy"] == 2 * base + adapters  # the base stays bfloat16
    # AdamW's two moments (+ a step counter per tensor) of the adapters only
    n_tensors = 2 * 7 * 5
    assert low.categories["Optstate"] == 2 * adapters + 4 * n_tensors


def test_resume_refuses_another_adapter(tmp_path: Path) -> None:
    """Resume safety (checkpoint.compat.check_adapter): LoRA on one side only, or other
    adapter settings, is refused; matching settings give the tensors by parameter name."""
    from weighted_mtp.errors import UserError
    from weighted_mtp.training.checkpoint.compat import check_adapter

    run = lora.lora_config(4, 8.0, 0.0, ["wq", "wv"])
    key = lora.file_key("layers.0.attention.wq.lora_A.default.weight")
    saved = (lora.lora_config(4, 8.0, 0.0, ["wv", "wq"]), {key: torch.ones(4, 32)})
    assert check_adapter(None, None, tmp_path) == {}
    got = check_adapter(saved, run, tmp_path)
    assert list(got) == ["layers.0.attention.wq.lora_A.default.weight"]
    with pytest.raises(UserError, match="no LoRA adapter.*lora.enabled=false"):
        check_adapter(None, run, tmp_path)
    with pytest.raises(UserError, match="holds LoRA adapters.*lora.enabled=true"):
        check_adapter(saved, None, tmp_path)
    with pytest.raises(UserError, match="r: 4 -> 8"):
        check_adapter(saved, lora.lora_config(8, 8.0, 0.0, ["wq", "wv"]), tmp_path)
