"""Text sources -> a deterministic stream of fixed-length token contexts.

How text becomes contexts (the same for every source):

1. Documents are read in a fixed order: rows of a .jsonl / .parquet file or of a Hub dataset
   are documents; a .txt file (or all of stdin) is one document, read in line-aligned pieces.
   A folder is read file by file: each directory's files in sorted order, then its
   subdirectories in sorted order.
2. Each document is tokenized without special tokens and followed by the tokenizer's EOS
   token (GPT-2's ``<|endoftext|>``), which separates documents in one long token stream.
3. The stream is cut into contexts of ``context_size`` tokens. With BOS (the default when the
   tokenizer defines one) each context is ``[BOS] + the next context_size - 1 stream tokens``,
   so BOS appears only at position 0 and never in the middle of text. A document longer
   than a context continues in the next context; a final incomplete context is dropped.

The stream is a pure function of the source and the tokenizer, which is what lets an
interrupted harvest, or n shards of one, regenerate exactly the same contexts.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import os
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from jsaectl.configs import BUNDLED_CORPUS, BUNDLED_HELDOUT
from jsaectl.errors import DataError, first_line

_TEXT_SUFFIXES = (".txt", ".text", ".md")
_JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
_PARQUET_SUFFIXES = (".parquet",)
_SUFFIXES = _TEXT_SUFFIXES + _JSONL_SUFFIXES + _PARQUET_SUFFIXES
_PIECE_CHARS = 1 << 18  # long .txt documents are tokenized in ~256k-character, line-aligned pieces


@dataclass(frozen=True)
class Piece:
    """Some text, and whether a document ends after it."""

    text: str
    ends_document: bool = True


def bundled_corpus_path(name: str = BUNDLED_CORPUS) -> str:
    filename = "heldout.jsonl" if name == BUNDLED_HELDOUT else "sample.jsonl"
    return str(resources.files("jsaectl") / "assets" / "corpus" / filename)


def _strip_gz(path: str) -> str:
    return path[:-3] if path.endswith(".gz") else path


def _open_text(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _text_pieces(stream: io.TextIOBase) -> Iterator[Piece]:
    """One document from a text stream, in line-aligned pieces."""
    buffer: list[str] = []
    size = 0
    for line in stream:
        buffer.append(line)
        size += len(line)
        if size >= _PIECE_CHARS:
            yield Piece("".join(buffer), ends_document=False)
            buffer, size = [], 0
    yield Piece("".join(buffer), ends_document=True)


def _selected(row: dict[str, Any], select: dict[str, str]) -> bool:
    """Whether a row has every label asked for (``select``: column -> value, compared as text)."""
    return all(key in row and str(row[key]) == value for key, value in select.items())


def _row_text(row: dict[str, Any], column: str, where: str) -> str:
    if column not in row:
        raise DataError(f"{where} has no column {column!r} (it has: {', '.join(map(str, row))})",
                        hint="name the text column with --text-column")
    value = row[column]
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _jsonl_rows(path: str) -> Iterator[dict[str, Any]]:
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {number} is not JSON: {e.msg}", hint=".jsonl files hold one JSON object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number} is not a JSON object", hint=".jsonl files hold one JSON object per line")
            yield row


def _jsonl_pieces(path: str, column: str, select: dict[str, str]) -> Iterator[Piece]:
    for row in _jsonl_rows(path):
        if _selected(row, select):
            yield Piece(_row_text(row, column, path))


def _parquet_pieces(path: str, column: str, select: dict[str, str]) -> Iterator[Piece]:
    import pyarrow.parquet as pq  # installed with datasets

    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"cannot read {path} as parquet: {e}") from None
    missing = [c for c in (column, *select) if c not in table.schema_arrow.names]
    if missing:
        raise DataError(f"{path} has no column {missing[0]!r} (it has: {', '.join(table.schema_arrow.names)})",
                        hint="name the text column with --text-column" if missing[0] == column else "select by a column it has")
    for batch in table.iter_batches(columns=list(dict.fromkeys([column, *select])), batch_size=1024):
        texts = batch.column(0).to_pylist() if not select else [r[column] for r in batch.to_pylist() if _selected(r, select)]
        yield from (Piece(text if isinstance(text, str) else "") for text in texts)


def _file_pieces(path: str, column: str, select: dict[str, str]) -> Iterator[Piece]:
    suffix = os.path.splitext(_strip_gz(path))[1].lower()
    with _read_errors(path):
        if suffix in _JSONL_SUFFIXES:
            yield from _jsonl_pieces(path, column, select)
        elif suffix in _PARQUET_SUFFIXES:
            yield from _parquet_pieces(path, column, select)
        elif select:
            raise DataError(f"{path} is plain text: it has no labels to select documents by",
                            hint="labels (SOURCE:key=value) select rows of .jsonl and .parquet files and Hub datasets")
        else:
            with _open_text(path) as f:
                for i, piece in enumerate(_text_pieces(f)):
                    if i == 0:
                        _check_is_text(piece.text, path)
                    yield piece


def _check_is_text(text: str, path: str) -> None:
    """Refuse a binary file given as text: read with replacement characters, it would become
    a stream of nonsense tokens that nothing downstream could tell from text."""
    sample = text[:1 << 16]
    if "\x00" in sample or sample.count("\ufffd") > 0.01 * max(1, len(sample)):
        raise DataError(f"{path} does not look like text (NUL bytes or invalid UTF-8)",
                        hint="give a UTF-8 .txt, .jsonl or .parquet file")


@contextlib.contextmanager
def _read_errors(path: str) -> Iterator[None]:
    """A damaged or unreadable file is a one-line DataError naming it (a cut-short .gz raises
    EOFError, which would otherwise pass for an interrupted run)."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path} is damaged or cut short ({e or type(e).__name__})",
                        hint="re-download or re-create it, or leave it out of --dataset") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})", hint="give a text file") from None
    except IsADirectoryError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}", hint="check the file and its permissions") from None


def _folder_files(folder: str) -> list[str]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        files += [os.path.join(root, n) for n in sorted(names) if _strip_gz(n).lower().endswith(_SUFFIXES)]
    if not files:
        raise DataError(f"{folder} holds no text files", hint="supported: " + ", ".join(_SUFFIXES) + " (optionally .gz)")
    return files


def _hub_pieces(name: str, subset: str | None, split: str, column: str, select: dict[str, str]) -> Iterator[Piece]:
    from jsaectl import hub

    if hub.offline(datasets=True) or not hub.reachable():
        raise DataError(f"{name!r} is neither a local file or folder nor reachable on the Hugging Face Hub (no network?)",
                        hint="give a local .txt/.jsonl/.parquet file or folder, or `-` for text on stdin")
    import datasets

    try:
        rows: Iterable[dict[str, Any]] = datasets.load_dataset(name, subset, split=split, streaming=True)
    except Exception as e:  # datasets raises many types for a bad id, split or config
        raise DataError(f"cannot open the Hub dataset {name!r}: {first_line(e)}", hint="check the id, --subset and --split") from None
    for row in rows:
        if _selected(row, select):
            yield Piece(_row_text(row, column, f"dataset {name!r}"))


def _looks_like_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or _strip_gz(spec).lower().endswith(_SUFFIXES) or spec.count("/") > 1


def open_source(spec: str | None, *, split: str = "train", subset: str | None = None, text_column: str = "text") -> Iterator[Piece]:
    """``iter_pieces`` with its first document already read, so that a missing, unreachable or
    empty source (or a terminal on stdin) fails now, before minutes of model loading."""
    pieces = iter_pieces(spec, split=split, subset=subset, text_column=text_column)
    first = next(pieces, None)
    if first is None:
        base, select = split_selection(spec)
        if select:
            raise DataError(f"no document of {describe_source(base)} has {', '.join(f'{k}={v}' for k, v in select.items())}",
                            hint=_labels_hint(base, select))
        raise DataError(f"{describe_source(spec)} holds no text", hint="give a source with at least one non-empty document")
    return itertools.chain([first], pieces)


def _labels_hint(spec: str | None, select: dict[str, str]) -> str:
    """What the labels asked for could be, for a bundled or local .jsonl source (read again)."""
    path = bundled_corpus_path(spec or BUNDLED_CORPUS) if spec in (None, BUNDLED_CORPUS, BUNDLED_HELDOUT) \
        else os.path.expanduser(spec)
    if not (path and os.path.isfile(path) and _strip_gz(path).lower().endswith(_JSONL_SUFFIXES)):
        return "check the labels: they are column values, compared as text"
    seen: dict[str, set[str]] = {key: set() for key in select}
    for row in _jsonl_rows(path):
        for key in seen:
            if key in row:
                seen[key].add(str(row[key]))
    return "; ".join(f"{key} is one of {', '.join(sorted(values)[:20])}" if values else f"no document has a {key} column"
                     for key, values in seen.items())


# SOURCE:key=value[,key=value…]: the documents of a .jsonl/.parquet file, folder or Hub dataset
# whose columns have these values (the bundled corpus's: lang, source, register).
_SELECTION = re.compile(r"^(?P<spec>.+):(?P<select>[A-Za-z_][\w-]*=[^,=]*(?:,[A-Za-z_][\w-]*=[^,=]*)*)$")


def split_selection(spec: str | None) -> tuple[str | None, dict[str, str]]:
    """``"jsaectl-sample:lang=de"`` -> ``("jsaectl-sample", {"lang": "de"})``."""
    match = _SELECTION.match(spec or "")
    if match is None:
        return spec, {}
    return match["spec"], dict(part.split("=", 1) for part in match["select"].split(","))


def iter_pieces(spec: str | None, *, split: str = "train", subset: str | None = None, text_column: str = "text") -> Iterator[Piece]:
    """All the text of a source, in order. ``spec``: None (the bundled corpus), ``-`` (stdin),
    a file, a folder, or a Hub dataset id; ``SOURCE:key=value,…`` keeps the documents (rows)
    whose columns have those values."""
    spec, select = split_selection(spec)
    if spec is None or spec in (BUNDLED_CORPUS, BUNDLED_HELDOUT):
        path = bundled_corpus_path(spec or BUNDLED_CORPUS)
        if not os.path.isfile(path):
            raise DataError("the bundled corpus is missing from this installation", hint="reinstall jsaectl, or pass --dataset")
        yield from _jsonl_pieces(path, "text", select)
    elif spec == "-":
        if select:
            raise DataError("text on stdin has no labels to select documents by", hint="select rows of a .jsonl file instead")
        if sys.stdin is None or sys.stdin.isatty():
            raise DataError("--dataset - reads text from stdin, but stdin is a terminal", hint="pipe text in: cat book.txt | jsaectl harvest ... --dataset -")
        # The bytes, decoded strictly: Python's own stdin may smuggle invalid bytes through as
        # surrogates (under a C locale), which no tokenizer accepts.
        raw = getattr(sys.stdin, "buffer", None)
        stream = io.TextIOWrapper(raw, encoding="utf-8") if raw is not None else sys.stdin
        with _read_errors("stdin"):
            for i, piece in enumerate(_text_pieces(stream)):
                if i == 0:
                    _check_is_text(piece.text, "stdin")
                yield piece
    elif os.path.isfile(os.path.expanduser(spec)):
        yield from _file_pieces(os.path.expanduser(spec), text_column, select)
    elif os.path.isdir(os.path.expanduser(spec)):
        for path in _folder_files(os.path.expanduser(spec)):
            yield from _file_pieces(path, text_column, select)
    elif _looks_like_local(spec):
        raise DataError(f"no such file or folder: {spec}", hint="give a .txt/.jsonl/.parquet file, a folder of them, a Hub dataset id, or -")
    else:
        yield from _hub_pieces(spec, subset, split, text_column, select)


def describe_source(spec: str | None) -> str:
    spec, select = split_selection(spec)
    chosen = "".join(f", {key}={value}" for key, value in select.items())
    if spec is None or spec == BUNDLED_CORPUS:
        return f"{BUNDLED_CORPUS} (bundled English/German sample{chosen})"
    if spec == BUNDLED_HELDOUT:
        return f"{BUNDLED_HELDOUT} (bundled English/German held-out sample{chosen})"
    return ("stdin" if spec == "-" else spec) + (f" (documents with {chosen[2:]})" if chosen else "")


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast path: Rust, batched, and no "sequence too long" warnings
        return [enc.ids for enc in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def token_stream(pieces: Iterator[Piece], tokenizer: Any, batch_chars: int = 1 << 20) -> Iterator[np.ndarray]:
    """Token ids of the pieces, with EOS after each document, in arrays of varying length."""
    eos = tokenizer.eos_token_id
    batch: list[Piece] = []
    size = 0

    def flush() -> np.ndarray:
        ids = _tokenize(tokenizer, [p.text for p in batch])
        parts = []
        for piece, piece_ids in zip(batch, ids):
            parts.append(np.asarray(piece_ids, dtype=np.int64))
            if piece.ends_document and eos is not None:
                parts.append(np.array([eos], dtype=np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= batch_chars or len(batch) >= 512:
            yield flush()
            batch, size = [], 0
    if batch:
        yield flush()


def iter_contexts(pieces: Iterator[Piece], tokenizer: Any, context_size: int, bos: bool = True,
                  keep_last: bool = False) -> Iterator[np.ndarray]:
    """Fixed-length contexts ``[context_size] int32`` (see the module docstring); with
    ``keep_last``, the final incomplete context too (for reading text, not storing it)."""
    bos_id = tokenizer.bos_token_id if bos else None
    body = context_size - (1 if bos_id is not None else 0)
    pending = np.zeros(0, dtype=np.int64)
    for ids in token_stream(pieces, tokenizer):
        pending = np.concatenate([pending, ids]) if len(pending) else ids
        n_full = len(pending) // body
        for i in range(n_full):
            chunk = pending[i * body : (i + 1) * body]
            context = np.concatenate([[bos_id], chunk]) if bos_id is not None else chunk
            yield context.astype(np.int32)
        pending = pending[n_full * body :]
    if keep_last and len(pending):
        yield (np.concatenate([[bos_id], pending]) if bos_id is not None else pending).astype(np.int32)


def text_contexts(text: str, tokenizer: Any, context_size: int, bos: bool = True) -> list[np.ndarray]:
    """A text cut into contexts as harvest cuts its stream (see the module docstring), but
    keeping the last, shorter context, and with no EOS after the text: it is a text to look at,
    not a finished document. Empty when it has no tokens."""
    return list(iter_contexts(iter([Piece(text, ends_document=False)]), tokenizer, context_size, bos, keep_last=True))
