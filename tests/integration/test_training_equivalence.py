"""Equivalences the research question relies on (REFERENCE §6, issue 5).

- gradient accumulation is token-exact: batch 8 x 1 == batch 2 x 4 accumulation steps;
- rho1 with k_percent = 1.0 == baseline; verifiable with beta -> large and value_coef = 0
  == baseline on the same samples; uniform weighting == the plain MTP loss;
- a weighting class defined outside the package plugs in through ``weighting._target_``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from weighted_mtp import app
from weighted_mtp.data.collate import Collator
from weighted_mtp.data.dataset import ProcessedDataset
from weighted_mtp.models.formats import load_model
from weighted_mtp.models.tokenizer import load_tokenizer
from weighted_mtp.training import checkpoint as ckpt
from weighted_mtp.training.losses import naive_mtp_loss
from weighted_mtp.training.task import Task, denominators, micro_step
from weighted_mtp.weighting import UniformWeighting, Weighting, WeightingInputs

SAME_SAMPLES = [
    "data_sampling.correct_ratio=1.0",
    "data_sampling.balance_correct=false",
    "data_sampling.curriculum_learning=false",
    "training.learning_rate=1e-3",
    "training.gradient_accumulation_steps=1",
]


def policy_after(cfg) -> dict[str, Tensor]:
    app.run(cfg)
    return ckpt.load(Path(cfg.checkpoint.save_dir) / "checkpoint_final")["modules"]["policy"]


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, worst


def grads_for(cfg, batch_size: int, accumulation: int) -> tuple[dict[str, Tensor], float]:
    tok = load_tokenizer(cfg.models.policy.tokenizer_path)
    model = load_model(cfg.models.policy.path)
    ds = ProcessedDataset(cfg.dataset.train)
    collator = Collator(tok, cfg.dataset.max_length)
    ids = list(range(batch_size * accumulation))
    batches = [
        collator(ds.records(ids[i : i + batch_size])) for i in range(0, len(ids), batch_size)
    ]
    task = Task(train_policy=True, weighting=UniformWeighting())
    den = denominators(task, batches, model.n_future_tokens)
    loss = sum(float(micro_step(task, model, b, den, backward=True)["loss"]) for b in batches)
    return {n: p.grad.clone() for n, p in model.named_parameters()}, loss


def test_accumulation_is_token_exact(make_cfg) -> None:
    cfg = make_cfg("baseline")
    g8, loss8 = grads_for(cfg, 8, 1)
    g2, loss2 = grads_for(cfg, 2, 4)
    assert abs(loss8 - loss2) < 1e-5
    assert_same(g8, g2, atol=1e-5)


def test_accumulation_in_the_loop(make_cfg) -> None:
    common = ["data_sampling.n_samples=8", "training.learning_rate=1e-6"]
    a = make_cfg(
        "baseline", *common, "training.batch_size=8", "training.gradient_accumulation_steps=1"
    )
    b = make_cfg(
        "baseline",
        *common,
        "training.batch_size=2",
        "training.gradient_accumulation_steps=4",
        f"checkpoint.save_dir={a.checkpoint.save_dir}-accum",
    )
    ra, rb = app.run(a), app.run(b)
    assert ra["step"] == rb["step"] == 1
    assert abs(ra["train/loss"] - rb["train/loss"]) < 1e-5
    sa = ckpt.load(Path(a.checkpoint.save_dir) / "checkpoint_final")["modules"]["policy"]
    sb = ckpt.load(Path(b.checkpoint.save_dir) / "checkpoint_final")["modules"]["policy"]
    assert_same(sa, sb, atol=1e-5)


def test_rho1_with_k_1_equals_baseline(make_cfg) -> None:
    base = policy_after(make_cfg("baseline", *SAME_SAMPLES))
    rho1 = policy_after(make_cfg("rho1", *SAME_SAMPLES, "training.k_percent=1.0"))
    assert_same(base, rho1)


def test_verifiable_with_huge_beta_and_no_value_loss_equals_baseline(make_cfg) -> None:
    critic = make_cfg("critic", "training.learning_rate=1e-2")
    app.run(critic)
    base = policy_after(make_cfg("baseline", *SAME_SAMPLES))
    ver = policy_after(
        make_cfg(
            "verifiable",
            *SAME_SAMPLES,
            "training.beta=1e9",
            "training.value_coef=0",
            f"experiment.critic_checkpoint={critic.checkpoint.save_dir}/checkpoint_final",
        )
    )
    assert_same(base, ver)


def test_uniform_weighting_is_the_plain_mtp_loss(make_cfg) -> None:
    cfg = make_cfg("baseline")
    model = load_model(cfg.models.policy.path)
    batch = Collator(load_tokenizer(cfg.models.policy.tokenizer_path), 160)(
        ProcessedDataset(cfg.dataset.train).records(range(4))
    )
    task = Task(train_policy=True, weighting=UniformWeighting())
    den = denominators(task, [batch], model.n_future_tokens)
    ours = micro_step(task, model, batch, den, backward=False)["loss"]
    h = model.trunk(batch.input_ids, batch.attention_mask)
    from weighted_mtp.training.losses import mtp_targets

    plain = naive_mtp_loss(model, h, batch.attention_mask, mtp_targets(batch.labels, 4)).loss
    assert torch.allclose(ours, plain.detach(), atol=1e-6)


class FirstHeadOnly(Weighting):
    """A user's weighting, defined outside the package: train the next-token head only."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def weights(self, inputs: WeightingInputs) -> Tensor:
        w = inputs.valid.float() * self.scale
        w[..., 1:] = 0
        return w


def test_user_weighting_plugs_in_by_target(make_cfg) -> None:
    cfg = make_cfg(
        "baseline",
        "weighting._target_=tests.integration.test_training_equivalence.FirstHeadOnly",
        "+weighting.scale=2.0",
        "training.learning_rate=1e-3",
    )
    after = policy_after(cfg)
    before = load_model(cfg.models.policy.path).state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert any(k.startswith("layers.3.") for k in changed)  # the next-token head moved
    assert not any(k.startswith("extra_heads.") for k in changed)  # heads 2..4 got no loss
