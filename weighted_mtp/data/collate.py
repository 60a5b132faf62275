"""Prompt template, tokenization with response-only labels, and batch collation.

Template (the ``### Input`` block is left out when ``input`` is empty)::

    ### Instruction:
    {instruction}

    ### Input:
    {input}

    ### Response:
    {output}

Tokens: ``[BOS] + encode(prompt) + encode(output) + [EOS]``; the prompt is everything up
to and including ``"### Response:\\n"``. Response tokens are the output's tokens and the
EOS; only they carry labels (``labels == input_ids`` there, ``-100`` on prompt and
padding; labels are *not* shifted, the loss shifts per head).

Truncation to ``max_length`` (rule): the response keeps at least
``min(len(response), max(1, max_length // 4))`` tokens. The prompt gets the rest; a prompt
that does not fit loses tokens from its *start* (BOS stays), so the text right before the
response survives. Then the response is cut at its *end* (the EOS goes first).
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

from weighted_mtp.data.records import Record

if TYPE_CHECKING:  # torch is imported where tensors are built (tokenizing needs no torch)
    import torch

IGNORE_INDEX = -100
RESPONSE_MARKER = "### Response:\n"


class Tokenizer(Protocol):
    """What collation needs from a tokenizer."""

    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...


def format_prompt(instruction: str, input_text: str = "") -> str:
    """The prompt text for a record (see the module docstring)."""
    parts = [f"### Instruction:\n{instruction.strip()}\n\n"]
    if input_text.strip():
        parts.append(f"### Input:\n{input_text.strip()}\n\n")
    parts.append(RESPONSE_MARKER)
    return "".join(parts)


@dataclass
class Encoded:
    """One tokenized record: ``ids`` and how many leading ids are prompt (incl. BOS)."""

    ids: list[int]
    prompt_len: int
    truncated: bool


def encode_prompt(record: Record, tokenizer: Tokenizer) -> list[int]:
    """BOS + the tokens of the record's prompt."""
    return [tokenizer.bos_id, *tokenizer.encode(format_prompt(record.instruction, record.input))]


def encode_record(
    record: Record, tokenizer: Tokenizer, max_length: int, prompt: list[int] | None = None
) -> Encoded:
    """Tokenize a record with the template and truncate it to ``max_length`` (the rule above).

    ``prompt``: the record's :func:`encode_prompt` ids, when already known (cached).
    """
    prompt = prompt if prompt is not None else encode_prompt(record, tokenizer)
    response = [*tokenizer.encode(record.output), tokenizer.eos_id]
    return fit(prompt, response, max_length)


def fit(prompt: list[int], response: list[int], max_length: int) -> Encoded:
    """Apply the truncation rule to a (prompt, response) pair; ``prompt[0]`` is BOS."""
    if len(prompt) + len(response) <= max_length:
        return Encoded(prompt + response, len(prompt), False)
    if max_length < 2:
        raise ValueError("max_length must be >= 2 (BOS + one response token)")
    keep_resp = min(len(response), max(1, max_length // 4))
    room = max_length - keep_resp
    if len(prompt) > room:
        prompt = [prompt[0], *prompt[len(prompt) - room + 1 :]] if room > 1 else prompt[:1]
    response = response[: max_length - len(prompt)]
    return Encoded(prompt + response, len(prompt), True)


@dataclass
class Batch:
    """A padded batch. Shapes: B records, S = longest sequence in the batch."""

    input_ids: torch.Tensor  # [B, S] long, pad_id on padding
    attention_mask: torch.Tensor  # [B, S] bool, True on real tokens
    labels: torch.Tensor  # [B, S] long, token id on response tokens, -100 elsewhere
    response_mask: torch.Tensor  # [B, S] bool, True where the token is a response token
    reward: torch.Tensor  # [B] float, 1.0 if is_correct else 0.0
    is_correct: torch.Tensor  # [B] bool
    difficulty: torch.Tensor  # [B] long
    record_ids: torch.Tensor  # [B] long, row in the dataset's index (-1 if unknown)
    task_ids: list[str]

    def to(self, device: torch.device | str) -> Batch:
        """Move the tensors to ``device``."""
        import torch

        moved = {
            f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v)
            for f in fields(self)
        }
        return Batch(**moved)


def collate(encoded: Sequence[Encoded], records: Sequence[Record], pad_id: int) -> Batch:
    """Right-pad encoded records to the longest one and build the Batch."""
    import torch

    width = max(len(e.ids) for e in encoded)
    n = len(encoded)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.bool)
    response = torch.zeros((n, width), dtype=torch.bool)
    for i, e in enumerate(encoded):
        input_ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
        attention[i, : len(e.ids)] = True
        response[i, e.prompt_len : len(e.ids)] = True
    labels = torch.where(response, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    correct = torch.tensor([r.is_correct for r in records], dtype=torch.bool)
    return Batch(
        input_ids=input_ids,
        attention_mask=attention,
        labels=labels,
        response_mask=response,
        reward=correct.float(),
        is_correct=correct,
        difficulty=torch.tensor([r.difficulty for r in records], dtype=torch.long),
        record_ids=torch.tensor([r.row for r in records], dtype=torch.long),
        task_ids=[r.task_id for r in records],
    )


class Collator:
    """``Collator(tokenizer, max_length)(records) -> Batch``; use as a DataLoader collate_fn.

    Padding uses ``tokenizer.pad_id``, or ``eos_id`` when the tokenizer has no pad token
    (``pad_id < 0``, as in Llama's SentencePiece); padding is masked either way. Prompt
    token ids are cached (LRU, ``prompt_cache`` entries): a problem's solutions share one
    prompt, so it is tokenized once.
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, prompt_cache: int = 8192) -> None:
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        pad = getattr(tokenizer, "pad_id", -1)
        self.pad_id = pad if pad is not None and pad >= 0 else tokenizer.eos_id
        self._cache: OrderedDict[tuple[str, str], array] = OrderedDict()
        self._cache_size = prompt_cache

    def encode(self, record: Record) -> Encoded:
        """:func:`encode_record` with the prompt ids from the cache."""
        key = (record.instruction, record.input)
        ids = self._cache.get(key)
        if ids is None:
            ids = array("i", encode_prompt(record, self.tokenizer))
            self._cache[key] = ids
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return encode_record(record, self.tokenizer, self.max_length, ids.tolist())

    def __call__(self, records: Sequence[Record]) -> Batch:
        if not records:
            raise ValueError("cannot collate an empty batch")
        return collate([self.encode(r) for r in records], records, self.pad_id)
