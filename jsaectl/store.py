"""The store contract shared by every stage (see docs/store-format.md).

Every store is a zarr v3 group whose ``attrs["jsaectl"]`` holds at least::

    {"kind": "activations" | "jsae" | "jacobian", "format": 1, "complete": bool,
     "created_by": "jsaectl X.Y.Z", "config": {...the stage config that defines the content...}}

A stage creates its store with ``complete: false``, writes, and flips ``complete`` at the very
end, so a reader never mistakes a half-written store for a result. Re-running a stage with the
same config resumes an incomplete store; a different config is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import zarr

from jsaectl import __version__
from jsaectl.errors import StoreError

FORMAT = 1
KINDS = ("activations", "jsae", "jacobian")
# Chunks along the token axis are at least this large (zarr's own advice: >= 1 MB).
MIN_CHUNK_BYTES = 1 << 20

_PRODUCERS = {"activations": "jsaectl harvest", "jsae": "jsaectl train", "jacobian": "jsaectl jacobian"}


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


def _exists(url: str) -> bool:
    if is_local(url):
        return os.path.exists(url)
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def _is_empty_dir(url: str) -> bool:
    return is_local(url) and os.path.isdir(url) and not os.listdir(url)


def _try_meta(url: str) -> dict[str, Any] | None:
    """The store's jsaectl attrs, or None when ``url`` holds no jsaectl store."""
    try:
        group = zarr.open_group(url, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
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

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        self.group.attrs["jsaectl"] = _jsonable(self.meta)

    def mark_complete(self, **fields: Any) -> None:
        """The last write of a stage: only now do readers accept the store."""
        self.update_meta(complete=True, **fields)


def open_store(url: str, kind: str | tuple[str, ...], *, require_complete: bool = True) -> Store:
    """Open an existing store for reading, checking its kind, format and completeness."""
    url = resolve_url(url)
    kinds = (kind,) if isinstance(kind, str) else kind
    wanted = " or ".join(kinds)
    if not _exists(url):
        raise StoreError(
            f"no store at {url}",
            hint=f"give the path printed by `{_PRODUCERS[kinds[0]]}`, or pipe that stage into this one",
        )
    meta = _try_meta(url)
    if meta is None:
        raise StoreError(
            f"{url} is not a jsaectl store",
            hint=f"this command reads {wanted} stores written by `{_PRODUCERS[kinds[0]]}`",
        )
    if meta.get("kind") not in kinds:
        raise StoreError(
            f"{url} is {describe(meta)}, but this command needs {_article(wanted)} {wanted} store",
            hint=_written_by(kinds),
        )
    if meta.get("format") != FORMAT:
        raise StoreError(
            f"{url} has store format {meta.get('format')}, this jsaectl ({__version__}) reads format {FORMAT}",
            hint="re-create the store with this version of jsaectl",
        )
    if require_complete and not meta.get("complete"):
        raise StoreError(
            f"{url} is incomplete: the `{_PRODUCERS[meta['kind']]}` that writes it was interrupted or is still running",
            hint="run the same command again to resume it",
        )
    return Store(url, zarr.open_group(url, mode="r"), meta)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ, for an error message."""
    old, new = _jsonable(old), _jsonable(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


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


def write_array(group: zarr.Group, name: str, array: Any, **kwargs: Any) -> zarr.Array:
    """Write a small array whole (one chunk), replacing any array of that name."""
    import numpy as np

    array = np.asarray(array)
    # Strings go in as zarr's variable-length UTF-8 (numpy's fixed-width "<U" has no v3 spec).
    dtype = str if array.dtype.kind in ("U", "O", "T") else array.dtype
    out = group.create_array(name, shape=array.shape, dtype=dtype, chunks=array.shape if array.ndim else (),
                             overwrite=True, **kwargs)
    out[...] = array
    return out


def _check_creatable(url: str) -> None:
    """A new local store needs a writable directory above it (checked before hours of work)."""
    if not is_local(url):
        return
    parent = os.path.dirname(url)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create {url}: {parent} is not a writable directory", hint="choose another --out")


def check_writable(url: str, kind: str, config: dict[str, Any], *, overwrite: bool = False) -> dict[str, Any] | None:
    """Refuse what ``prepare_output`` would refuse, without writing anything.

    Returns the existing store's metadata when it can be resumed (same kind and config),
    None when a new store will be made.
    """
    url = resolve_url(url)
    if not _exists(url) or _is_empty_dir(url):
        _check_creatable(url)
        return None
    meta = _try_meta(url)
    if meta is None:
        raise StoreError(f"{url} exists and is not a jsaectl store; refusing to write into it", hint="choose another --out")
    diff = config_diff(meta.get("config", {}), config)
    if meta.get("kind") == kind and meta.get("format") == FORMAT and not diff:
        return None if overwrite else meta
    if overwrite:
        return None
    why = f"it is {describe(meta)}" if meta.get("kind") != kind else "it was made with a different config: " + ", ".join(diff)
    raise StoreError(f"{url} already exists and {why}", hint="pass --overwrite to replace it, or choose another --out")


def prepare_output(url: str, kind: str, config: dict[str, Any], *, overwrite: bool) -> tuple[Store, bool]:
    """Create the output store, or reopen it to resume.

    Returns ``(store, resumed)``. An existing store of the same kind and the same ``config``
    is reopened as it is (complete or not: the stage decides what is left to do). Anything
    else at ``url`` is refused unless ``overwrite`` (and never replaced when it is not a
    jsaectl store at all, so a typo in ``--out`` cannot wipe a directory).
    """
    url = resolve_url(url)
    config = _jsonable(config)
    existing = check_writable(url, kind, config, overwrite=overwrite)
    if existing is not None:
        return Store(url, zarr.open_group(url, mode="r+"), existing), True
    meta = {
        "kind": kind,
        "format": FORMAT,
        "complete": False,
        "created_by": f"jsaectl {__version__}",
        "config": config,
    }
    # Mode "w" removes whatever the store held. Mode "a" never deletes: shards of one harvest
    # may create the same store at the same time, each writing identical metadata. Either way
    # the attrs go in with the group, not in a second write that a reader could miss.
    try:
        if overwrite and _exists(url):
            group = zarr.open_group(url, mode="w", attributes={"jsaectl": meta})
        else:
            group = race_safe(zarr.open_group, url, mode="a", attributes={"jsaectl": meta})
            if "jsaectl" not in group.attrs:  # another shard's group, its attrs not yet written
                time.sleep(0.2)
                group = zarr.open_group(url, mode="r+")
    except OSError as e:
        raise StoreError(f"cannot create {url}: {e.strerror or e}", hint="choose another --out") from None
    found = dict(group.attrs.get("jsaectl", meta))
    if config_diff(found.get("config", {}), config):
        raise StoreError(f"{url} was just created by another process with a different config", hint="give each run its own --out")
    return Store(url, group, found), False
