"""Micro assets: tokenizer round trip, policy trains/saves/reloads, reference loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from weighted_mtp.assets import (
    ASSETS_RECIPE,
    MICRO_MTP_DIR,
    MICRO_REF_DIR,
    MICRO_REF_PARAMS,
    MICRO_VOCAB_SIZE,
    _new_model,
    assets_complete,
    build_micro_assets,
    default_corpus_files,
    pretrain,
    pretrained_state,
    record_sequences,
)
from weighted_mtp.data.records import Record
from weighted_mtp.errors import UserError
from weighted_mtp.models.formats import (
    load_model,
    save_meta_dir,
    save_safetensors,
)
from weighted_mtp.models.hf import hf_state_dict
from weighted_mtp.models.mtp import ModelArgs
from weighted_mtp.models.reference import load_reference, reference_token_ce
from weighted_mtp.models.tokenizer import load_tokenizer
from weighted_mtp.training.losses import backward_trunk, mtp_loss, mtp_targets
from weighted_mtp.training.reference_cache import cache_key

CODE = [
    "def add(a, b):\n    return a + b\n",
    "n = int(input())\nfor i in range(n):\n\tprint(i * 2)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, x):\n        self.items.append(x)\n",
    "import sys\ndata = sys.stdin.read().split()\nprint(sum(map(int, data)))\n",
]


def _corpus(tmp: Path) -> Path:
    f = tmp / "train.jsonl"
    with f.open("w") as fh:
        for i in range(300):
            rec = {
                "instruction": f"Problem {i}: print the sum of {i} numbers.",
                "input": f"{i} {i + 1}\n",
                "output": CODE[i % len(CODE)] + f"# {i}\n",
                "task_id": f"t{i}",
                "is_correct": i % 2 == 0,
                "metadata": {"difficulty": 3},
            }
            fh.write(json.dumps(rec) + "\n")
    return f


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("storage")
    build_micro_assets(root, [_corpus(root)], seed=0, pretrain_steps=2)
    return root


def test_layout_and_idempotence(assets: Path):
    mtp, ref = assets / MICRO_MTP_DIR, assets / MICRO_REF_DIR
    params = json.loads((mtp / "params.json").read_text())
    assert params["n_future_tokens"] == 4 and params["n_layers"] == 7 and params["dim"] == 128
    assert (mtp / "tokenizer" / "tokenizer.model").read_bytes() == (
        ref / "tokenizer.model"
    ).read_bytes()
    stamp = (mtp / "consolidated.pth").stat().st_mtime_ns
    build_micro_assets(assets, [], seed=0)  # complete: nothing happens
    assert (mtp / "consolidated.pth").stat().st_mtime_ns == stamp
    assert not list((assets / "models").glob(".micro-build-*"))


def test_deterministic(assets: Path, tmp_path: Path):
    build_micro_assets(tmp_path, [_corpus(tmp_path)], seed=0, pretrain_steps=2)
    for rel in (f"{MICRO_MTP_DIR}/tokenizer/tokenizer.model", f"{MICRO_REF_DIR}/model.safetensors"):
        assert (tmp_path / rel).read_bytes() == (assets / rel).read_bytes(), rel
    a, b = load_model(assets / MICRO_MTP_DIR), load_model(tmp_path / MICRO_MTP_DIR)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_tokenizer_round_trip_and_ids(assets: Path):
    tok = load_tokenizer(assets / MICRO_MTP_DIR / "tokenizer")
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 0)
    assert 259 < tok.vocab_size <= MICRO_VOCAB_SIZE  # 3 specials + 256 bytes + learned pieces
    for text in [*CODE, "  x\t=\t'ünïcødé 漢字'  \n\n\n    ", "", " leading", "1234567"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert tok.encode(text, bos=True, eos=True) == [1, *ids, 2]
    assert len(tok.encode("    return a + b")) <= 5  # indentation / code pieces learned
    hf = AutoTokenizer.from_pretrained(assets / MICRO_REF_DIR, local_files_only=True)
    for text in CODE:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    with pytest.raises(UserError, match="no SentencePiece tokenizer.model"):
        load_tokenizer(assets)


def test_policy_trains_saves_reloads(assets: Path, tmp_path: Path):
    tok = load_tokenizer(assets / MICRO_MTP_DIR / "tokenizer")
    model = load_model(assets / MICRO_MTP_DIR, "float32", vocab_size=tok.vocab_size)
    texts = CODE[:2]
    enc = [tok.encode(t, bos=True, eos=True) for t in texts]
    s = max(map(len, enc))
    ids = torch.tensor([e + [tok.pad_id] * (s - len(e)) for e in enc])
    mask = torch.tensor([[1] * len(e) + [0] * (s - len(e)) for e in enc])
    targets = mtp_targets(ids.masked_fill(mask == 0, -100), model.n_future_tokens)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        h = model.trunk(ids, mask)
        out = mtp_loss(model, h, mask, targets)
        backward_trunk(h, out)
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    save_meta_dir(model, tmp_path / "meta")
    save_safetensors(model, tmp_path / "st")
    for again in (load_model(tmp_path / "meta"), load_model(tmp_path / "st")):
        for (n, p), q in zip(model.named_parameters(), again.parameters(), strict=True):
            assert torch.equal(p, q), n


def test_reference_loads_frozen_and_scores(assets: Path):
    tok = load_tokenizer(assets / MICRO_MTP_DIR / "tokenizer")
    ref = load_reference(assets / MICRO_REF_DIR, "float32", tok)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    enc = [tok.encode(t, bos=True) for t in CODE[:3]]
    s = max(map(len, enc))
    ids = torch.tensor([e + [0] * (s - len(e)) for e in enc])
    mask = (ids != 0).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    ce = reference_token_ce(ref, ids, mask, labels, chunk_size=7)
    with torch.no_grad():
        logits = ref(input_ids=ids, attention_mask=mask).logits
    want = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    torch.testing.assert_close(ce[:, :-1], want, atol=1e-5, rtol=1e-5)
    assert (ce[:, -1] == 0).all() and (ce[labels.roll(-1, 1) == -100] == 0).all()
    assert ce[mask.bool() & (labels.roll(-1, 1) != -100)].min() > 0


def test_reference_vocab_mismatch_is_clear(assets: Path, tmp_path: Path):
    tok = load_tokenizer(assets / MICRO_MTP_DIR / "tokenizer")
    other = tmp_path / "other"
    build_micro_assets(other, default_corpus_files()[:3], seed=1, pretrain_steps=0)
    with pytest.raises(UserError, match="vocabularies differ|vocab_size"):
        load_reference(other / MICRO_REF_DIR, "float32", tok)
    m = AutoModelForCausalLM.from_pretrained(assets / MICRO_REF_DIR, local_files_only=True)
    m.resize_token_embeddings(tok.vocab_size + 8)
    m.save_pretrained(tmp_path / "bigger")
    with pytest.raises(UserError, match=f"has {tok.vocab_size}"):
        load_reference(tmp_path / "bigger", "float32", tok)


def test_reference_ce_ignores_the_training_autocast(assets: Path):
    """Scored inside a bf16 autocast (as in a mixed-precision micro-step), a float32
    reference gives its float32 losses, not bf16-quantised ones."""
    tok = load_tokenizer(assets / MICRO_MTP_DIR / "tokenizer")
    ref = load_reference(assets / MICRO_REF_DIR, "float32", tok)
    ids = torch.tensor([tok.encode(CODE[3], bos=True)])
    mask = torch.ones_like(ids)
    labels = ids.clone()
    want = reference_token_ce(ref, ids, mask, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = reference_token_ce(ref, ids, mask, labels)
        quantised = ref(input_ids=ids, attention_mask=mask).logits  # what autocast does
    assert got.dtype == torch.float32
    assert (got - want).abs().max().item() <= 1e-6
    assert quantised.dtype == torch.bfloat16  # the autocast was really on


def test_reference_cache_key_covers_precision_and_inputs(assets: Path, tmp_path: Path):
    data = _corpus(tmp_path)
    tok_file = assets / MICRO_MTP_DIR / "tokenizer" / "tokenizer.model"
    args = (assets / MICRO_REF_DIR, data, tok_file, 160, 1.0)
    base = cache_key(*args, "float32", "cpu")
    assert cache_key(*args, "float32", "cpu") == base
    changed = {
        cache_key(*args, "bfloat16", "cpu"),
        cache_key(*args, "float16", "cpu"),
        cache_key(*args, "float32", "cuda"),
        cache_key(*args[:3], 128, 1.0, "float32", "cpu"),
        cache_key(*args[:4], 2.0, "float32", "cpu"),
    }
    assert base not in changed and len(changed) == 5


def test_assets_of_an_older_recipe_are_rebuilt(tmp_path: Path):
    build_micro_assets(tmp_path, [_corpus(tmp_path)], seed=0, pretrain_steps=0)
    info = tmp_path / MICRO_MTP_DIR / "assets.json"
    assert assets_complete(tmp_path)
    info.write_text(json.dumps({**json.loads(info.read_text()), "recipe": ASSETS_RECIPE - 1}))
    assert not assets_complete(tmp_path)
    build_micro_assets(tmp_path, [_corpus(tmp_path)], seed=0, pretrain_steps=0)
    assert json.loads(info.read_text())["recipe"] == ASSETS_RECIPE


def test_assets_built_with_other_settings_are_rebuilt(tmp_path: Path):
    build_micro_assets(tmp_path, [_corpus(tmp_path)], pretrain_steps=0, build={"steps": 0})
    assert assets_complete(tmp_path, {"steps": 0}) and assets_complete(tmp_path)
    assert not assets_complete(tmp_path, {"steps": 5})  # setup rebuilds them


def test_pretraining_on_records_learns_responses_data_parallel_as_inline(assets: Path):
    """Pretraining on task records: loss on the responses only (the prompt is context),
    the same bits data parallel over two gloo ranks (worker processes) as inline, and the
    response loss goes down."""
    tok = load_tokenizer(assets / MICRO_MTP_DIR / "tokenizer")
    lines = (assets / "train.jsonl").read_text().splitlines()[:32]
    seqs = record_sequences([Record(**json.loads(line)) for line in lines], tok)
    assert all(0 < e.prompt_len < len(e.ids) for e in seqs)
    params = {"dim": 32, "n_layers": 3, "n_heads": 2, "n_kv_heads": 1, "multiple_of": 16,
              "norm_eps": 1e-5, "rope_theta": 10000.0, "n_future_tokens": 2}  # fmt: skip
    args = (params, tok.vocab_size, 0, seqs, 6, tok.pad_id)
    inline = pretrained_state(*args)
    parallel = pretrained_state(*args, jobs=2)
    assert all(torch.equal(inline[k], parallel[k]) for k in inline)
    assert not all(torch.equal(inline[k], v) for k, v in _new_model(params, tok.vocab_size, 0)
                   .state_dict().items())  # fmt: skip
    losses = pretrain(_new_model(params, tok.vocab_size, 0), seqs, 30, seed=0, pad_id=tok.pad_id)
    assert losses[-1] < losses[0] - 1.0


def test_the_reference_is_the_policy_next_token_part_fine_tuned(assets: Path, tmp_path: Path):
    """Rho-1's reference: the policy's embeddings, trunk, head 0, norm and output, fine-tuned
    on the reference records (with 0 steps, exactly the policy's next-token model)."""
    records = [Record(**json.loads(x)) for x in (assets / "train.jsonl").read_text().splitlines()]
    for steps in (0, 2):
        root = tmp_path / f"ref{steps}"
        root.mkdir()
        build_micro_assets(
            root, [_corpus(root)], seed=0, pretrain_steps=2, reference_records=records[:8],
            reference_steps=steps,
        )  # fmt: skip
        policy = load_model(root / MICRO_MTP_DIR)
        part = {k: v for k, v in policy.state_dict().items() if not k.startswith("extra_heads.")}
        args = ModelArgs(**MICRO_REF_PARAMS, vocab_size=policy.args.vocab_size)
        want = hf_state_dict(part, args)
        ref = load_file(root / MICRO_REF_DIR / "model.safetensors")
        assert set(ref) == set(want)
        same = [torch.equal(ref[k], want[k]) for k in ref]
        assert all(same) if steps == 0 else not any(same)
