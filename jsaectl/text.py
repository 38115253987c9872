"""Token text for display: the bytes of each token, windows of tokens decoded as UTF-8, and
latent labels made of tokens.

Byte-level BPE tokenizers (GPT-2, GPT-NeoX, Llama 3, Qwen) split characters such as "ä" over
two tokens, so decoding tokens one at a time shows "�". Harvest stores each token's raw
bytes; a window is decoded as one byte stream, and each character is shown on the token that
completes it.
"""

from __future__ import annotations

import codecs
from typing import Any

import numpy as np


def _byte_level_table() -> dict[str, int]:
    """GPT-2's map from printable stand-in characters back to bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer: Any) -> list[bytes]:
    """The raw bytes of every token id (best effort for tokenizers that are not byte-level)."""
    ids = list(range(len(tokenizer)))
    pieces = tokenizer.convert_ids_to_tokens(ids)
    decoder = repr(getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", ""))
    if "ByteLevel" in decoder:
        table = _byte_level_table()
        return [bytes(table[c] for c in p) if p is not None and all(c in table for c in p) else str(p).encode() for p in pieces]
    if "ByteFallback" in decoder or "Metaspace" in decoder or "▁" in decoder:  # sentencepiece
        out = []
        for p in pieces:
            p = str(p)
            if len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
                out.append(bytes([int(p[3:5], 16)]))
            else:
                out.append(p.replace("▁", " ").encode())
        return out
    return [s.encode() for s in tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)]


def pack(byte_strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Flat uint8 data and int64 offsets [V + 1], for a zarr store."""
    offsets = np.zeros(len(byte_strings) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in byte_strings])
    data = np.frombuffer(b"".join(byte_strings), dtype=np.uint8).copy()
    return data, offsets


def decode_window(ids: np.ndarray, data: np.ndarray, offsets: np.ndarray) -> list[str]:
    """The text shown for each token of a window: characters go to the token that completes them."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = [decoder.decode(data[offsets[i] : offsets[i + 1]].tobytes()) for i in ids]
    tail = decoder.decode(b"", final=True)
    if tail and out:
        out[-1] += tail
    return out


def display_token(text: str) -> str:
    """A token as it reads in a table: quoted, with whitespace made visible."""
    return repr(str(text)).replace("\\n", "⏎")


def label(tokens: np.ndarray, vocab: np.ndarray, top: int = 3) -> str:
    """A latent's label: its most frequent tokens among its top activations, e.g. `'von'×7 'der'×4`."""
    tokens = tokens[tokens >= 0]
    if tokens.size == 0:
        return "(never active)"
    ids, counts = np.unique(tokens, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return " ".join(f"{display_token(vocab[ids[i]])}×{counts[i]}" for i in order)
