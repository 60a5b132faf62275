"""Collation: template, response-only labels, truncation rule, dynamic right padding."""

from __future__ import annotations

import torch

from weighted_mtp.data.collate import IGNORE_INDEX, Collator, encode_record, format_prompt
from weighted_mtp.data.records import Record


class CharTokenizer:
    """One token per character (ids 10..), BOS 1, EOS 2, PAD 0."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [10 + (ord(c) % 200) for c in text]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos


def record(instruction: str, output: str, correct: bool = True, inp: str = "") -> Record:
    meta = {"source": "t", "difficulty": 5, "problem_id": "p"}
    return Record(instruction, inp, output, f"t/{output[:3]}", correct, meta, row=4)


def test_template() -> None:
    assert format_prompt("Add.", "Example") == (
        "### Instruction:\nAdd.\n\n### Input:\nExample\n\n### Response:\n"
    )
    assert format_prompt("Add.", "") == "### Instruction:\nAdd.\n\n### Response:\n"


def test_masks_labels_padding_and_fields() -> None:
    tok = CharTokenizer()
    a, b = record("Sum.", "print(1)", True), record("Sum two.", "x", False, inp="1 2")
    batch = Collator(tok, max_length=512)([a, b])
    len_a = 1 + len(format_prompt("Sum.")) + len("print(1)") + 1
    len_b = 1 + len(format_prompt("Sum two.", "1 2")) + 1 + 1
    assert batch.input_ids.shape == (2, max(len_a, len_b)) and batch.input_ids.dtype == torch.long
    assert batch.attention_mask.sum(1).tolist() == [len_a, len_b]
    assert batch.attention_mask.dtype == torch.bool and batch.response_mask.dtype == torch.bool
    assert batch.input_ids[1, len_b:].eq(0).all() and not batch.attention_mask[1, len_b:].any()
    assert batch.response_mask.sum(1).tolist() == [len("print(1)") + 1, 2]
    p = 1 + len(format_prompt("Sum."))
    assert batch.input_ids[0, 0] == 1 and batch.input_ids[0, len_a - 1] == 2
    assert batch.labels[0, :p].eq(IGNORE_INDEX).all()
    assert batch.labels[0, p:len_a].tolist() == tok.encode("print(1)") + [2]
    assert batch.labels[1, len_b:].eq(IGNORE_INDEX).all()
    assert torch.equal(batch.labels != IGNORE_INDEX, batch.response_mask)
    assert batch.reward.tolist() == [1.0, 0.0] and batch.is_correct.tolist() == [True, False]
    assert batch.difficulty.tolist() == [5, 5] and batch.record_ids.tolist() == [4, 4]
    assert batch.task_ids == ["t/pri", "t/x"]


def test_truncation_keeps_prompt_and_cuts_response_end() -> None:
    tok = CharTokenizer()
    r = record("Short.", "y" * 200)
    p = 1 + len(format_prompt("Short."))
    enc = encode_record(r, tok, max_length=p + 50)
    assert enc.truncated and len(enc.ids) == p + 50 and enc.prompt_len == p
    assert enc.ids[p:] == tok.encode("y" * 50)  # response prefix, EOS dropped


def test_truncation_of_a_long_prompt_keeps_bos_end_of_prompt_and_a_quarter() -> None:
    tok = CharTokenizer()
    r = record("x" * 300, "print(42)")
    enc = encode_record(r, tok, max_length=40)
    assert len(enc.ids) == 40 and enc.ids[0] == 1
    assert enc.prompt_len == 40 - 10 and enc.ids[30:] == tok.encode("print(42)") + [2]
    assert enc.ids[1:30] == tok.encode(format_prompt("x" * 300))[-29:]
    long_both = encode_record(record("x" * 300, "z" * 300), tok, max_length=40)
    assert long_both.prompt_len == 30 and long_both.ids[30:] == tok.encode("z" * 10)


def test_pad_falls_back_to_eos_when_tokenizer_has_none() -> None:
    tok = CharTokenizer()
    tok.pad_id = -1
    batch = Collator(tok, 64)([record("A.", "1"), record("Longer.", "123456")])
    assert batch.input_ids[0, ~batch.attention_mask[0]].eq(2).all()
    assert batch.to("cpu").input_ids.shape == batch.input_ids.shape


def test_prompt_cache_gives_the_same_encoding() -> None:
    tok = CharTokenizer()
    recs = [record("x" * 300, "print(42)"), record("Short.", "y" * 200), record("A.", "1")]
    col = Collator(tok, 40, prompt_cache=1)
    for r in recs + recs[::-1]:
        assert col.encode(r) == encode_record(r, tok, 40)
    assert len(col._cache) == 1
