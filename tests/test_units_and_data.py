"""Small pieces: counts like 2M, text sources, the context stream, token display."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from jsaectl.data import iter_contexts, iter_pieces
from jsaectl.errors import ConfigError, DataError
from jsaectl.text import decode_window, pack, token_bytes
from jsaectl.units import format_count, parse_count


@pytest.mark.parametrize("text,value", [("2M", 2_000_000), ("500k", 500_000), ("1.5e6", 1_500_000), ("300_000", 300_000),
                                        ("2b", 2_000_000_000), (" 7 ", 7), (12, 12)])
def test_parse_count(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["lots", "-5", "0", "2MB", ""])
def test_parse_count_refuses(text):
    with pytest.raises(ConfigError):
        parse_count(text)


def test_format_count():
    assert [format_count(v) for v in (2_000_000, 1536, 999, 2.5)] == ["2M", "1.5k", "999", "2.5"]


def test_sources_txt_jsonl_folder_and_documents_are_separated_by_eos(tmp_path, tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("the quick brown fox\njumps over\n")
    (tmp_path / "d" / "b.jsonl").write_text(json.dumps({"body": "der Hund"}) + "\n\n" + json.dumps({"body": "die Katze"}) + "\n")
    texts = [p.text for p in iter_pieces(str(tmp_path / "d"), text_column="body")]
    assert texts == ["the quick brown fox\njumps over\n", "der Hund", "die Katze"]
    stream = np.concatenate([c[1:] for c in iter_contexts(iter_pieces(str(tmp_path / "d"), text_column="body"), tok, 4)])
    eos = tok.eos_token_id
    expected = []
    for t in texts:
        expected += tok(t, add_special_tokens=False)["input_ids"] + [eos]
    assert list(stream) == expected[: len(stream)] and len(expected) - len(stream) < 3
    with pytest.raises(DataError, match="no column 'text'"):
        list(iter_pieces(str(tmp_path / "d" / "b.jsonl")))


def test_contexts_start_with_bos_only(tokenizer_dir, corpus):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    contexts = list(iter_contexts(iter_pieces(str(corpus)), tok, 16))
    assert all(c[0] == tok.bos_token_id for c in contexts) and all(len(c) == 16 for c in contexts)
    plain = list(iter_contexts(iter_pieces(str(corpus)), tok, 16, bos=False))
    assert np.concatenate(plain)[:15].tolist() == contexts[0][1:].tolist()


def test_byte_level_tokens_decode_to_whole_characters(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    text = "schläft über den Hund"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    data, offsets = pack(token_bytes(tok))
    pieces = decode_window(np.array(ids), data, offsets)
    assert "".join(pieces) == text and len(pieces) == len(ids)
    assert "�" not in "".join(pieces)
