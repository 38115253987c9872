"""Read character vectors out of an R package's lazy-load data base (data/Rdata.rdx + .rdb).

R CRAN packages that ship text (janeaustenr, tokenizers) store it as serialized R objects.
This is a minimal reader for R's XDR serialization format (version 2/3), enough for
character vectors, named lists and their attributes; it needs no R installation.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path
from typing import Any

# SEXP type codes used below (see R Internals, "Serialization Formats").
NILVALUE, REFSXP, SYMSXP, LISTSXP, CHARSXP = 254, 255, 1, 2, 9
LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP, EXPRSXP = 10, 13, 14, 16, 19, 20
SKIPPED_MARKERS = {253, 252, 251, 250, 242, 241}  # env markers, empty/base env etc.
PAIRLIST_TYPES = {LISTSXP, 6, 17, 239, 240}


class _Reader:
    """Recursive-descent decoder over one serialized buffer."""

    def __init__(self, buf: bytes) -> None:
        if buf[:2] != b"X\n":
            raise ValueError("only XDR (big-endian binary) serialization is supported")
        self.buf, self.pos, self.refs = buf, 2, []
        version = self.int()
        self.int(), self.int()  # writer R version, minimal reader version
        if version == 3:
            name_length = self.int()  # read first: `pos += int()` would use the stale pos
            self.pos += name_length   # skip the native-encoding name

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return value

    def length(self) -> int:
        n = self.int()
        return (self.int() << 32) + self.int() if n == -1 else n

    def item(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & 512), bool(flags & 1024)
        if kind == NILVALUE or kind in SKIPPED_MARKERS:
            return None
        if kind == REFSXP:
            index = flags >> 8
            return self.refs[(index or self.int()) - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == CHARSXP:
            n = self.int()
            if n < 0:  # NA_character_
                return None
            text = self.buf[self.pos:self.pos + n].decode("utf-8", "replace")
            self.pos += n
            return text
        if kind in PAIRLIST_TYPES:
            return self.pairlist(has_attr, has_tag)
        return self.vector(kind, has_attr)

    def pairlist(self, has_attr: bool, has_tag: bool) -> dict:
        out: dict = {}
        while True:
            if has_attr:
                self.item()
            tag = self.item() if has_tag else None
            out[tag] = self.item()
            flags = self.int()
            kind, has_attr, has_tag = flags & 0xFF, bool(flags & 512), bool(flags & 1024)
            if kind == NILVALUE:
                return out
            if kind not in PAIRLIST_TYPES:
                raise ValueError(f"unexpected SEXP {kind} inside a pairlist")

    def vector(self, kind: int, has_attr: bool) -> Any:
        n = self.length()
        if kind in (LGLSXP, INTSXP):
            value: Any = list(struct.unpack_from(f">{n}i", self.buf, self.pos))
            self.pos += 4 * n
        elif kind == REALSXP:
            value = list(struct.unpack_from(f">{n}d", self.buf, self.pos))
            self.pos += 8 * n
        elif kind in (STRSXP, VECSXP, EXPRSXP):
            value = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"unsupported SEXP type {kind}")
        if has_attr:
            names = (self.item() or {}).get("names")
            if names and kind in (VECSXP, EXPRSXP):
                value = dict(zip(names, value))
        return value


def _decompress(record: bytes) -> bytes:
    """A .rdb record is a 4-byte length, then zlib data, or a type byte + bzip2/xz data."""
    body = record[4:]
    if body[:1] == b"2":
        return bz2.decompress(body[1:])
    if body[:1] == b"X":
        return lzma.decompress(body[1:])
    if body[:1] == b"Z":
        return zlib.decompress(body[1:])
    return zlib.decompress(body)


def read_lazyload_db(base: Path) -> dict[str, Any]:
    """Return {variable name: decoded R object} for `base`.rdx / `base`.rdb."""
    index = _Reader(gzip.decompress(base.with_suffix(".rdx").read_bytes())).item()
    data = base.with_suffix(".rdb").read_bytes()
    out = {}
    for name, (offset, size) in index["variables"].items():
        out[name] = _Reader(_decompress(data[offset:offset + size])).item()
    return out


def character_vectors(base: Path) -> dict[str, list[str]]:
    """Only the variables that are plain character vectors (e.g. the lines of a novel)."""
    return {name: [s or "" for s in value] for name, value in read_lazyload_db(base).items()
            if isinstance(value, list) and all(isinstance(s, (str, type(None))) for s in value)}
