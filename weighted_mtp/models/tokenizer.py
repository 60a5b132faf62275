"""Llama-style SentencePiece tokenizer (``tokenizer.model``): unk 0, bos 1, eos 2.

Padding rule: Llama 2's model defines no pad piece (``pad_id() == -1``). ``pad_id`` is then
``unk_id`` (0): a valid embedding row that a byte-fallback tokenizer never emits for real
text. Padding is identified by the attention mask, never by comparing ids with ``pad_id``;
losses must ignore padded positions (labels -100). A model that defines a pad piece keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sentencepiece import SentencePieceProcessor

from weighted_mtp.errors import UserError

TOKENIZER_FILE = "tokenizer.model"


def find_tokenizer_file(path: str | Path) -> Path:
    """``path`` itself, ``path/tokenizer.model`` or ``path/tokenizer/tokenizer.model``."""
    p = Path(path)
    for cand in (p, p / TOKENIZER_FILE, p / "tokenizer" / TOKENIZER_FILE):
        if cand.is_file():
            return cand
    raise UserError(
        f"no SentencePiece {TOKENIZER_FILE} at {p}: set models.policy.tokenizer_path "
        "to the file or to a directory that contains it"
    )


class Tokenizer:
    """Thin wrapper over SentencePieceProcessor with Llama's conventions."""

    def __init__(self, model_file: str | Path) -> None:
        self.path = Path(model_file)
        try:
            self.sp = SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{self.path} is not a SentencePiece model: {e}") from e
        if self.sp.bos_id() < 0 or self.sp.eos_id() < 0:
            raise UserError(
                f"{self.path} defines no bos/eos pieces: a Llama-style "
                "tokenizer.model (unk 0, bos 1, eos 2) is required"
            )

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from a ``tokenizer.model`` file or a directory containing it."""
        return cls(find_tokenizer_file(path))

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    @property
    def bos_id(self) -> int:
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    @property
    def pad_id(self) -> int:
        """The model's pad piece, or ``unk_id`` when it has none (Llama): see module doc."""
        pad = self.sp.pad_id()
        return pad if pad >= 0 else self.unk_id

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Text -> ids, optionally with bos first / eos last."""
        ids: list[int] = self.sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text (special pieces bos/eos/unk produce no text)."""
        return self.sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))


def policy_tokenizer_path(policy_path: str | Path, tokenizer_path: str | None) -> str:
    """``models.policy.tokenizer_path``, or its default ``<policy path>/tokenizer``."""
    return tokenizer_path or str(Path(policy_path) / "tokenizer")


def config_tokenizer_path(cfg: Any) -> str:
    """The policy tokenizer of a run config (:func:`policy_tokenizer_path` of its
    ``models.policy`` section)."""
    return policy_tokenizer_path(cfg.models.policy.path, cfg.models.policy.tokenizer_path)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the policy tokenizer (file or directory)."""
    return Tokenizer.load(path)
