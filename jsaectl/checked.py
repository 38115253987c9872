"""Zarr storage that cannot pass off damage as data.

Every store jsaectl opens goes through :class:`CheckedStore`, a thin wrapper around zarr's
own local or fsspec store that looks at each chunk as it is read:

* a chunk whose array ends its codec chain with ``crc32c`` must match its checksum, or the
  read fails with a :class:`StoreError` naming the store, the array and the chunk (zarr would
  also refuse it, but with an anonymous ``ValueError``; a truncated chunk would reach the
  decompressor and fail as a "Zstd decompression error");
* in a *strict* store (a complete store of format 2 opened for reading) a chunk that does not
  exist is an error, not a block of fill values: jsaectl writes every chunk of every array
  (``write_empty_chunks``), so a missing one means the store was damaged. ``progress/`` is
  exempt (its fill value -1 means "not written yet" by design);
* node metadata (``zarr.json``) that is not JSON is named, instead of surfacing as a bare
  ``JSONDecodeError``.

The checksum is verified here rather than caught from zarr because only the store sees the
chunk's key; zarr's codec checks it again after us, which costs one more pass of crc32c over
the compressed bytes (hardware-accelerated; see tests/bench/bench_harvest.py for the cost).
"""

from __future__ import annotations

import json
import re
from typing import Any

import google_crc32c  # zarr's own crc32c implementation
import numpy as np
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from jsaectl.errors import StoreError, first_line

# A chunk key of zarr v3's default encoding: <array path>/c/<i>/<j>... (or c/... for a root array).
_CHUNK_KEY = re.compile(r"^(?:(.*)/)?c((?:/\d+)*)$")
# Arrays whose unwritten chunks mean "not yet": their fill value is the bookkeeping.
SPARSE_PREFIXES = ("progress",)


def parse_chunk_key(key: str) -> tuple[str, tuple[int, ...]] | None:
    """``"mlp/W_in/c/0/1"`` -> ``("mlp/W_in", (0, 1))``; None for keys that are not chunks."""
    m = _CHUNK_KEY.match(key)
    if m is None:
        return None
    return m.group(1) or "", tuple(int(p) for p in m.group(2).split("/") if p)


def crc_ok(data: np.ndarray) -> bool:
    """Whether the last 4 bytes of ``data`` are the crc32c of the rest (zarr's crc32c codec)."""
    return len(data) >= 4 and np.uint32(google_crc32c.value(data[:-4])).tobytes() == bytes(data[-4:])


def describe_chunk(array: str, index: tuple[int, ...]) -> str:
    return f"chunk {'.'.join(map(str, index)) or '0'} of array {array or '/'}"


class CheckedStore(WrapperStore[Store]):
    """A zarr store that checks checksums, refuses missing chunks (``strict``) and names
    unreadable metadata. ``url`` is how errors name the store."""

    def __init__(self, store: Store, url: str = "", strict: bool = False) -> None:
        super().__init__(store)
        self.url = url or str(store)
        self.strict = strict
        self._checked: dict[str, bool] = {}  # array path -> whether its chunks end in a crc32c

    def _with_store(self, store: Store) -> CheckedStore:
        return type(self)(store, self.url, self.strict)

    def _damaged(self, what: str, why: str) -> StoreError:
        return StoreError(f"{self.url}: {what} {why}", hint=_REPAIR_HINT)

    async def _has_checksum(self, array: str, prototype: BufferPrototype) -> bool:
        if array not in self._checked:
            raw = await self._store.get(f"{array}/zarr.json" if array else "zarr.json", prototype)
            meta = _parse_meta(raw, array, self.url) if raw is not None else {}
            codecs = meta.get("codecs") or []
            self._checked[array] = bool(codecs) and isinstance(codecs[-1], dict) and codecs[-1].get("name") == "crc32c"
        return self._checked[array]

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        buf = await self._store.get(key, prototype, byte_range)
        if key == "zarr.json" or key.endswith("/zarr.json"):
            if buf is not None:
                _parse_meta(buf, key[: -len("zarr.json")].rstrip("/"), self.url)
            return buf
        parsed = parse_chunk_key(key)
        if parsed is None or byte_range is not None:
            return buf
        array, index = parsed
        if buf is None:
            if self.strict and not array.startswith(SPARSE_PREFIXES):
                raise self._damaged(describe_chunk(array, index), "is missing")
            return buf
        if await self._has_checksum(array, prototype) and not crc_ok(buf.as_numpy_array()):
            raise self._damaged(describe_chunk(array, index), "fails its checksum (the file was changed or cut short)")
        return buf

    async def set(self, key: str, value: Buffer) -> None:
        if key.endswith("zarr.json"):  # an array re-created in place may change its codecs
            self._checked.pop(key[: -len("zarr.json")].rstrip("/"), None)
        await self._store.set(key, value)


_REPAIR_HINT = ("`jsaectl verify` lists all the damage; mend an activations store with `jsaectl verify --repair`, "
                "any other by re-running the stage that wrote it with --overwrite")


def _parse_meta(raw: Buffer, node: str, url: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw.to_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{url}: the metadata of {'array or group ' + node if node else 'the store'} is unreadable ({e})",
                         hint=_REPAIR_HINT) from None
    if not isinstance(meta, dict):
        raise StoreError(f"{url}: the metadata of {node or 'the store'} is not a JSON object", hint=_REPAIR_HINT)
    return meta


def base_store(url: str, *, local: bool, read_only: bool) -> Store:
    """zarr's own store for a local path or an fsspec URL, with errors a user can act on."""
    if local:
        return LocalStore(url, read_only=read_only)
    scheme = url.split("://", 1)[0]
    try:
        return FsspecStore.from_url(url, read_only=read_only)
    except ImportError as e:  # fsspec knows the protocol, its backend package is missing
        package = re.search(r"install (\S+)", str(e), re.IGNORECASE)
        raise StoreError(f"{url}: the {scheme}:// backend is not installed ({first_line(e)})",
                         hint=f"pip install {package.group(1)}" if package else "install the fsspec backend for it") from None
    except ValueError as e:
        if "protocol" in str(e).lower():
            raise StoreError(f"{url}: unknown URL protocol {scheme}://",
                             hint="give a local path or an fsspec URL such as s3://, gs:// or memory://") from None
        raise StoreError(f"cannot open {url}: {first_line(e)}", hint="check the URL") from None
    except OSError as e:  # a backend that cannot start (hdfs:// without Java, ...)
        raise StoreError(f"cannot open {url}: the {scheme}:// backend failed to start ({first_line(e)})",
                         hint="check that backend's own requirements, or use a local path") from None


