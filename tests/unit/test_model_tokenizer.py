"""Tokenizer: Llama conventions, exact round trip of real code, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from weighted_mtp.assets import (
    MICRO_VOCAB_SIZE,
    corpus_documents,
    default_corpus_files,
    train_tokenizer,
)
from weighted_mtp.errors import UserError
from weighted_mtp.models.tokenizer import Tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus_documents(default_corpus_files()), d / "tokenizer.model")
    return load_tokenizer(d)


def test_llama_ids_and_size(tok: Tokenizer):
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.sp.pad_id() == -1 and tok.pad_id == tok.unk_id  # documented pad rule
    assert 259 + 500 <= tok.vocab_size <= MICRO_VOCAB_SIZE  # 3 specials + 256 bytes + pieces
    assert tok.id_to_piece(13) == "<0x0A>"  # newline through byte fallback, as in Llama 2


def test_project_source_round_trips_exactly(tok: Tokenizer):
    files = default_corpus_files()
    assert len(files) > 5
    for f in files:
        text = f.read_text()
        assert tok.decode(tok.encode(text)) == text, f
    weird = "\t\tif x:\r\n  \u00a0y = '🙂'  # tab\tend\n\n"
    assert tok.decode(tok.encode(weird, bos=True, eos=True)) == weird


def test_indentation_is_compact(tok: Tokenizer):
    ids = tok.encode("        return self")
    assert len(ids) <= 4, [tok.id_to_piece(i) for i in ids]


def test_errors(tmp_path: Path):
    with pytest.raises(UserError, match="tokenizer_path"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path)
