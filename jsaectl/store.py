"""The store contract shared by every stage (see docs/store-format.md).

Every store is a zarr v3 group whose ``attrs["jsaectl"]`` holds at least::

    {"kind": "activations" | "jsae" | "jacobian", "format": 2, "complete": bool,
     "created_by": "jsaectl X.Y.Z", "config": {...the stage config that defines the content...}}

A stage creates its store with ``complete: false``, writes, and flips ``complete`` at the very
end, so a reader never mistakes a half-written store for a result. Re-running a stage with the
same config resumes an incomplete store; a different config is refused unless ``overwrite``.

Format 2 (this version) writes every chunk of every array with a crc32c checksum after the
compressor, and writes chunks even when they hold only the fill value, so that a reader can
tell a damaged or missing chunk from data (see checked.py). Format 1 stores (no checksums;
chunks equal to the fill value not written) are still read, with a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from jsaectl import __version__
from jsaectl import lock as locks
from jsaectl.checked import CheckedStore, base_store
from jsaectl.errors import JsaectlWarning, StoreError

FORMAT = 2
READABLE_FORMATS = (1, 2)
# Chunks along the token axis are at least this large (zarr's own advice: >= 1 MB).
MIN_CHUNK_BYTES = 1 << 20

_PRODUCERS = {"activations": "jsaectl harvest", "jsae": "jsaectl train", "jacobian": "jsaectl jacobian"}
# What a complete store of each kind must hold (checked when it is opened, so a deleted array
# is named at once rather than failing as a KeyError deep inside a stage).
REQUIRED = {
    "activations": ("x", "tokens", "position", "vocab", "mlp/W_in", "mlp/b_in", "mlp/W_out", "mlp/b_out"),
    "lazy activations": ("tokens", "vocab", "mlp/W_in", "mlp/b_in", "mlp/W_out", "mlp/b_out", "lazy/witness_x",
                         "lazy/witness_rows"),
    "jsae": tuple(f"{s}/{p}" for s in ("sae_in", "sae_out") for p in ("W_enc", "b_enc", "W_dec", "b_dec")),
    "jacobian": tuple(f"connections/{c}" for c in ("input", "output", "strength", "count", "mean_abs", "max_abs", "mean"))
    + tuple(f"index/{a}" for a in ("by_input", "by_output", "input_offsets", "output_offsets"))
    + ("latents/in_label", "latents/out_label", "histogram/edges", "histogram/counts"),
}

# Every chunk is written, even one that holds only the fill value: a missing chunk then means
# damage, never "zeros" (zarr's default skips such chunks). jsaectl's own setting, for the
# process it runs in.
zarr.config.set({"array.write_empty_chunks": True})


def required(meta: dict[str, Any]) -> tuple[str, ...]:
    """The arrays a complete store of this kind must hold (a lazy activations store has no x)."""
    kind = meta.get("kind")
    return REQUIRED.get(f"lazy {kind}" if meta.get("lazy") else kind, ())


class LegacyStoreWarning(JsaectlWarning):
    """A store of an older format was opened: it reads, but damage to it cannot be detected."""


def resolve_url(url: str) -> str:
    """Local paths become absolute (so the next stage finds them from any directory);
    ``file://`` URLs become paths; other fsspec URLs (s3://, gs://, memory://) pass through."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return os.path.abspath(parsed.netloc + parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # a Windows drive letter is not a scheme
        return url
    return os.path.abspath(os.path.expanduser(url))


def is_local(url: str) -> bool:
    return os.path.isabs(url)


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    base_store(url, local=False, read_only=True)  # one-line errors for unknown protocols and missing backends
    return fsspec.core.url_to_fs(url)


def exists(url: str, key: str = "") -> bool:
    path = url if not key else f"{url.rstrip('/')}/{key}"
    if is_local(url):
        return os.path.exists(path)
    fs, p = _fs(path)
    return fs.exists(p)


def _is_empty_dir(url: str) -> bool:
    """Nothing there but (perhaps) lock objects: a store can be created in it."""
    if is_local(url):
        return os.path.isdir(url) and all(n.startswith(locks.LOCK) for n in os.listdir(url))
    fs, path = _fs(url)
    try:
        return all(p.rstrip("/").rsplit("/", 1)[-1].startswith(locks.LOCK) for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return True


def checked_store(url: str, *, read_only: bool, strict: bool = False) -> CheckedStore:
    return CheckedStore(base_store(url, local=is_local(url), read_only=read_only), url, strict=strict)


def try_meta(url: str) -> dict[str, Any] | None:
    """The store's jsaectl attrs, or None when ``url`` holds no jsaectl store."""
    try:
        group = zarr.open_group(store=checked_store(url, read_only=True), mode="r")
    except (FileNotFoundError, NotADirectoryError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    except StoreError as e:
        if "metadata of the store" in e.message:
            raise
        return None
    except (ValueError, OSError, json.JSONDecodeError):
        return None
    meta = group.attrs.get("jsaectl")
    return dict(meta) if isinstance(meta, dict) else None


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def describe(meta: dict[str, Any]) -> str:
    kind = str(meta.get("kind", "?"))
    return f"{_article(kind)} {kind} store (format {meta.get('format', '?')})"


# The attr naming the store of a kind that a store was made from; a command reading one follows them.
MADE_FROM = {"activations": "acts_store", "jsae": "jsae_store"}


def _made_from(meta: dict[str, Any], kinds: tuple[str, ...]) -> str | None:
    """``the jsae store it was made from is …`` when the store given records one of the kinds wanted."""
    for kind in kinds:
        source = meta.get(MADE_FROM.get(kind, ""))
        if source:
            ask = "; ask it itself with `jsaectl connections`" if meta.get("kind") == "jacobian" else ""
            return f"the {kind} store it was made from is {source}{ask}"
    return None


def _written_by(kinds: tuple[str, ...]) -> str:
    return "; ".join(f"{kind} stores are written by `{_PRODUCERS[kind]}`" for kind in kinds)


@dataclass
class Store:
    """An open jsaectl store: its URL, zarr group and jsaectl metadata."""

    url: str
    group: zarr.Group
    meta: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        self.group.attrs["jsaectl"] = _jsonable(self.meta)

    def mark_complete(self, **fields: Any) -> None:
        """The last write of a stage: only now do readers accept the store."""
        self.update_meta(complete=True, **fields)

    def array(self, name: str) -> zarr.Array:
        """An array of the store, or a one-line error naming what is missing. Kept once opened
        when the store is read-only (a lookup reads and parses the array's metadata)."""
        cache = self.__dict__.setdefault("_arrays", {})
        if name in cache:
            return cache[name]
        try:
            node = self.group[name]
        except KeyError:
            raise StoreError(f"{self.url} has no array {name}: the store is damaged or was not written by this jsaectl",
                             hint="run `jsaectl verify` on it, or re-run the stage that wrote it") from None
        if not isinstance(node, zarr.Array):
            raise StoreError(f"{self.url}: {name} is not an array", hint="run `jsaectl verify` on it")
        if self.group.read_only:
            cache[name] = node
        return node

    def finite(self, name: str, lo: int | None = None, hi: int | None = None) -> np.ndarray:
        """Rows ``[lo, hi)`` (all when not given) of a float array, refused if any is NaN or inf."""
        values = self.array(name)[lo:hi] if lo is not None or hi is not None else self.array(name)[...]
        check_finite(values, f"{self.url}: {name}" + (f" rows {lo}–{hi}" if lo is not None else ""))
        return values


def check_finite(values: Any, where: str) -> None:
    """Refuse NaN or inf in ``values`` (a numpy array or a torch tensor)."""
    if isinstance(values, np.ndarray):  # numpy: no need to import torch for it
        bad = not np.isfinite(values).all()
    else:
        import torch

        bad = (~torch.isfinite(values)).any().item() if isinstance(values, torch.Tensor) else not np.isfinite(values).all()
    if bad:
        raise StoreError(f"{where} holds non-finite values (NaN or inf)",
                         hint="a result computed from them would be meaningless; run `jsaectl verify` on the store, "
                         "and re-run the stage that wrote it")


_WARNED: set[str] = set()


def open_store(url: str, kind: str | tuple[str, ...], *, require_complete: bool = True) -> Store:
    """Open an existing store for reading, checking its kind, format and completeness.

    A complete store of format 2 is opened *strict*: every chunk read is checked against its
    checksum, and a missing chunk is an error rather than zeros."""
    url = resolve_url(url)
    kinds = (kind,) if isinstance(kind, str) else kind
    wanted = " or ".join(kinds)
    if not exists(url):
        raise StoreError(f"no store at {url}",
                         hint=f"give the path printed by `{_PRODUCERS[kinds[0]]}`, or pipe that stage into this one")
    meta = try_meta(url)
    if meta is None:
        raise StoreError(f"{url} is not a jsaectl store", hint=f"this command reads {wanted} stores written by `{_PRODUCERS[kinds[0]]}`")
    if meta.get("kind") not in kinds:
        raise StoreError(f"{url} is {describe(meta)}, but this command needs {_article(wanted)} {wanted} store",
                         hint=_made_from(meta, kinds) or _written_by(kinds))
    if meta.get("format") not in READABLE_FORMATS:
        raise StoreError(f"{url} has store format {meta.get('format')}, this jsaectl ({__version__}) reads formats "
                         f"{', '.join(map(str, READABLE_FORMATS))}", hint="open it with the jsaectl that wrote it, or re-create it")
    if require_complete and not meta.get("complete"):
        raise StoreError(f"{url} is incomplete: the `{_PRODUCERS[meta['kind']]}` that writes it was interrupted or is still running",
                         hint="run the same command again to resume it")
    strict = meta["format"] >= 2 and bool(meta.get("complete"))
    store = Store(url, zarr.open_group(store=checked_store(url, read_only=True, strict=strict), mode="r"), meta)
    if meta["format"] < 2 and url not in _WARNED:
        _WARNED.add(url)
        warnings.warn(LegacyStoreWarning(f"{url} is a format-{meta['format']} store: its chunks carry no checksums, so "
                                         "damage to it cannot be detected (re-run the stage that wrote it to upgrade)"),
                      stacklevel=2)
    if meta.get("complete"):
        for name in required(meta):
            store.array(name)
    return store


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ, for an error message."""
    old, new = _jsonable(old), _jsonable(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


# --------------------------------------------------------------------------------------------
# Arrays


_RACES = (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError)


def race_safe(make: Any, *args: Any, **kwargs: Any) -> Any:
    """``make(...)`` for a ``require_*`` or create call that another process (a shard of the
    same harvest) may be making at the same moment: if it got there first, open its node."""
    for attempt in range(5):
        try:
            return make(*args, **kwargs)
        except _RACES:
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))


def codecs(compression: str = "zstd") -> list[Any]:
    """The bytes-to-bytes codecs of every array jsaectl writes: the compressor (zstd at zarr's
    default level, or none), then a crc32c checksum of what is stored."""
    return ([ZstdCodec(level=0, checksum=False)] if compression == "zstd" else []) + [Crc32cCodec()]


def create_array(group: zarr.Group, name: str, *, compression: str = "zstd", **kwargs: Any) -> zarr.Array:
    """``group.create_array`` with jsaectl's codecs (replacing any array of that name)."""
    kwargs.setdefault("overwrite", True)
    return group.create_array(name, compressors=codecs(compression), **kwargs)


def require_array(group: zarr.Group, name: str, *, compression: str = "zstd", **kwargs: Any) -> zarr.Array:
    """Create the array, or open it as it is (never destructive: shards may race here)."""
    return race_safe(group.require_array, name, compressors=codecs(compression), **kwargs)


def write_array(group: zarr.Group, name: str, array: Any, **kwargs: Any) -> zarr.Array:
    """Write a small array whole (one chunk), replacing any array of that name."""
    array = np.asarray(array)
    # Strings go in as zarr's variable-length UTF-8 (numpy's fixed-width "<U" has no v3 spec).
    dtype = str if array.dtype.kind in ("U", "O", "T") else array.dtype
    out = create_array(group, name, shape=array.shape, dtype=dtype, chunks=array.shape if array.ndim else (), **kwargs)
    out[...] = array
    return out


# --------------------------------------------------------------------------------------------
# Output stores: where they may go, who may write them


def default_url(stem: str, config: dict[str, Any]) -> str:
    """``runs/<stem>-<hash of the config>.zarr``: every stage's default --out, so that a re-run
    with the same config finds its store and another config gets its own. A store of that
    config renamed since (harvest names a store by the tokens it holds) is found by its hash."""
    import glob
    import hashlib

    digest = hashlib.sha256(json.dumps(_jsonable(config), sort_keys=True).encode()).hexdigest()[:8]
    url = os.path.join("runs", f"{stem}-{digest}.zarr")
    if not os.path.exists(url):
        found = sorted(glob.glob(os.path.join("runs", f"*-{digest}.zarr")))
        if len(found) == 1:
            return found[0]
    return url


def stem(url: str, fallback: str) -> str:
    """A store's name without ``.zarr``, for naming what is made from it."""
    import re

    return re.sub(r"\.zarr$", "", os.path.basename(url.rstrip("/"))) or fallback


def _check_creatable(url: str, what: str = "--out") -> None:
    """A new local store (or output folder) needs a writable directory above it, checked before
    hours of work: not a file on the way, not a read-only parent."""
    if not is_local(url):
        return
    parent = os.path.dirname(url)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create {what} {url}: {parent} is not a writable directory", hint=f"choose another {what}")


def _local_output(path: str, reads: Sequence[str], what: str, kind: str) -> str:
    """The resolved path of a local output ``kind`` (file or directory), checked by :func:`check_alias`."""
    url = resolve_url(path)
    if not is_local(url):
        raise StoreError(f"{what} must be a local {kind}, not {path}", hint="write it locally, then copy it")
    check_alias(url, reads, what)
    return url


def check_output_dir(path: str, reads: Sequence[str], what: str = "--out") -> str:
    """The local folder an output (a report, an export) is written into, refused before any work
    when it is not local, is, is inside or contains a store the command reads or follows (see
    :func:`check_alias`), lies inside any zarr store, is a file, or cannot be made (a file on the
    way, a read-only parent: the output is written beside it, then moved in)."""
    url = _local_output(path, reads, what, "directory")
    if os.path.lexists(url) and not os.path.isdir(url):
        raise StoreError(f"{what} {url} exists and is not a directory", hint=f"choose another {what}")
    _check_creatable(url, what)
    return url


def _same_or_inside(inner: str, outer: str) -> bool:
    if is_local(inner) and is_local(outer):
        inner, outer = os.path.realpath(inner), os.path.realpath(outer)
    inner, outer = inner.rstrip("/"), outer.rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def check_alias(out: str, reads: Sequence[str], what: str = "--out") -> None:
    """Refuse an output that is, is inside, or contains a store the command reads or follows
    (``reads`` and their :func:`lineage`), or that is inside any existing zarr store: writing
    there could destroy the input."""
    for read in dict.fromkeys(r for url in reads for r in lineage(url)):
        if _same_or_inside(out, read) or _same_or_inside(read, out):
            relation = "is" if _same_or_inside(out, read) and _same_or_inside(read, out) else \
                ("is inside" if _same_or_inside(out, read) else "contains")
            raise StoreError(f"{what} {out} {relation} {read}, which this command reads",
                             hint=f"choose another {what}: writing there would destroy the input")
    parent = out.rstrip("/")
    while True:
        parent, _, tail = parent.rpartition("/")
        if not parent or not tail or (not is_local(out) and parent.endswith(":/")):
            return
        if exists(parent, "zarr.json"):
            raise StoreError(f"{what} {out} is inside the zarr store {parent}",
                             hint=f"choose another {what} outside it; a store is never written into another")


def lineage(url: str) -> list[str]:
    """``url`` and every store it was made from, as their attrs record them (a jacobian store's
    JSAE and activations, a JSAE's activations): what a command reading ``url`` follows, and so
    what none of its outputs may be, be inside, or contain."""
    found: list[str] = []
    todo = [resolve_url(url)]
    while todo:
        current = todo.pop(0)
        if current in found:
            continue
        found.append(current)
        meta = try_meta(current) or {}
        todo += [resolve_url(meta[key]) for key in MADE_FROM.values() if isinstance(meta.get(key), str) and meta[key]]
    return found


def check_output_file(path: str, reads: Sequence[str], what: str) -> None:
    """A file an output option names (``--plot``, ``--html``), refused before any work when it
    is, is inside or contains a store the command reads or follows, lies inside any zarr store,
    is a directory, or sits where nothing can be written."""
    url = _local_output(path, reads, what, "file")
    if os.path.isdir(url):
        raise StoreError(f"{what} {url} is a directory", hint="give a file name")
    parent = os.path.dirname(url)
    if not os.path.isdir(parent):
        raise StoreError(f"{what} {url}: {parent} is not a directory", hint="create the directory first, or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{what} {url}: {parent} is not writable", hint="choose another path")


def check_writable(url: str, kind: str, config: dict[str, Any], *, overwrite: bool = False,
                   reads: Sequence[str] = (), shard: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """Refuse what ``writing`` would refuse, without writing anything (every process of a
    distributed run may call it; stages call it before minutes of model loading).

    Returns the existing store's metadata when it can be resumed or reused (same kind and
    config), None when a new store will be made.
    """
    url = resolve_url(url)
    check_alias(url, reads)
    if not exists(url) or _is_empty_dir(url):
        _check_creatable(url)
        return None
    holder = locks.live_holder(url, is_local(url), shard)
    if holder is not None:
        raise StoreError(locks.busy_message(url, holder), hint="wait for it to finish, or give this run another --out")
    meta = try_meta(url)
    if meta is None:
        raise StoreError(f"{url} exists and is not a jsaectl store; refusing to write into it", hint="choose another --out")
    diff = config_diff(meta.get("config", {}), config)
    if meta.get("kind") == kind and meta.get("format") == FORMAT and not diff:
        return None if overwrite else meta
    if overwrite:
        return None
    if meta.get("kind") != kind:
        why = f"it is {describe(meta)}"
    elif meta.get("format") != FORMAT:
        why = f"it is a format-{meta.get('format')} store and this jsaectl writes format {FORMAT}"
    else:
        why = "it was made with a different config: " + ", ".join(diff)
    raise StoreError(f"{url} already exists and {why}", hint="pass --overwrite to replace it, or choose another --out")


def _clear(url: str) -> None:
    """Delete everything in the store but its lock objects (``--overwrite``, lock held)."""
    if is_local(url):
        for name in os.listdir(url):
            if not name.startswith(locks.LOCK):
                path = os.path.join(url, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        return
    fs, root = _fs(url)
    for path in fs.ls(root, detail=False):
        if not path.rstrip("/").rsplit("/", 1)[-1].startswith(locks.LOCK):
            fs.rm(path, recursive=True)


def spill_dir(url: str) -> str:
    """Where a stage writing ``url`` keeps temporary files: one place per output store (inside
    it when local, so it goes with the store), removed at the end, on a signal, and on re-run."""
    if is_local(url):
        return os.path.join(url, ".jsaectl-spill")
    import hashlib
    import tempfile

    return os.path.join(tempfile.gettempdir(), "jsaectl-spill-" + hashlib.sha256(url.encode()).hexdigest()[:16])


def remove_spill(url: str) -> None:
    shutil.rmtree(spill_dir(url), ignore_errors=True)


@contextmanager
def writing(url: str, kind: str, config: dict[str, Any], *, overwrite: bool, reads: Sequence[str] = (),
            shard: tuple[int, int] | None = None) -> Iterator[tuple[Store, bool]]:
    """Hold the output store's write lock while the stage writes it.

    Yields ``(store, resumed)``: an existing store of the same kind and config is reopened as
    it is (complete or not: the stage decides what is left to do); anything else at ``url`` is
    refused unless ``overwrite``, and never replaced when it is not a jsaectl store at all, so a
    typo in ``--out`` cannot wipe a directory. ``--overwrite`` deletes only once the lock is held.
    """
    url = resolve_url(url)
    config = _jsonable(config)
    check_writable(url, kind, config, overwrite=overwrite, reads=reads, shard=shard)  # before creating anything
    created_dir = is_local(url) and not os.path.exists(url)
    try:
        lock = locks.acquire(url, is_local(url), shard)
    except OSError as e:
        raise StoreError(f"cannot create {url}: {e.strerror or e}", hint="choose another --out") from None
    try:
        existing = check_writable(url, kind, config, overwrite=overwrite, reads=reads, shard=shard)  # again, holding the lock
        remove_spill(url)  # whatever an earlier, killed run of this store left
        if existing is not None:
            yield Store(url, zarr.open_group(store=checked_store(url, read_only=False), mode="r+"), existing), True
        else:
            yield _create(url, kind, config, overwrite), False
    finally:
        remove_spill(url)
        lock.release()
        if created_dir and _is_empty_dir(url):  # refused or failed before writing anything
            shutil.rmtree(url, ignore_errors=True)


def _create(url: str, kind: str, config: dict[str, Any], overwrite: bool) -> Store:
    meta = {"kind": kind, "format": FORMAT, "complete": False, "created_by": f"jsaectl {__version__}", "config": config}
    # The attrs go in with the group, not in a second write that a reader could miss. Shards
    # of one harvest may create the same store at the same moment, each with identical metadata.
    try:
        if overwrite and not _is_empty_dir(url):
            _clear(url)
        group = race_safe(zarr.open_group, store=checked_store(url, read_only=False), mode="a", attributes={"jsaectl": meta})
        if "jsaectl" not in group.attrs:  # another shard's group, its attrs not yet written
            time.sleep(0.2)
            group = zarr.open_group(store=checked_store(url, read_only=False), mode="r+")
    except OSError as e:
        raise StoreError(f"cannot create {url}: {e.strerror or e}", hint="choose another --out") from None
    found = dict(group.attrs.get("jsaectl", meta))
    if config_diff(found.get("config", {}), config):
        raise StoreError(f"{url} was just created by another process with a different config", hint="give each run its own --out")
    return Store(url, group, found)
