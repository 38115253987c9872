"""`jsaectl verify`: read every chunk of a store and say whether it can be trusted.

For each array of the store: every chunk the array's shape calls for is present (except in
``progress/``, where an unwritten chunk means "pending"), matches its crc32c checksum,
decodes, and (float arrays) holds only finite values; the shapes agree with the store's
attrs. ``repair`` re-harvests exactly the damaged chunks of an activations store, through
harvest's own resume machinery, so the result is byte-identical to a clean run.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from jsaectl import lock as locks
from jsaectl.acts import nonfinite
from jsaectl import store as st
from jsaectl.checked import SPARSE_PREFIXES, base_store, crc_ok, describe_chunk
from jsaectl.errors import ConfigError, StoreError, first_line
from jsaectl.progress import SILENT, Reporter
from jsaectl.trained import jsae_problems

# Float arrays where a non-finite value is a marker, not damage.
_NAN_OK = ("history/",)  # a metric not computed at that step
_NEG_INF_OK = ("latents/in_top_values", "latents/out_top_values", "examples/pair_values")  # an empty example slot
# Arrays of an activations store with one zarr chunk per harvest chunk along the token axis.
ROW_ARRAYS = ("x", "y", "tokens", "position")


@dataclass
class Problem:
    array: str
    what: str
    chunk: tuple[int, ...] | None = None

    def __str__(self) -> str:
        where = describe_chunk(self.array, self.chunk) if self.chunk is not None else (f"array {self.array}" if self.array else "store")
        return f"{where}: {self.what}"


@dataclass
class Report:
    url: str
    kind: str | None = None
    format: int | None = None
    complete: bool = False
    lazy: bool = False
    arrays: int = 0
    chunks: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = [{"array": p.array, "chunk": list(p.chunk) if p.chunk is not None else None, "what": p.what,
                            "text": str(p)} for p in self.problems]
        return {**out, "ok": self.ok}


def verify(url: str, reporter: Reporter = SILENT) -> Report:
    """Check one store; every problem found is listed, none is raised."""
    url = st.resolve_url(url)
    report = Report(url)
    if not st.exists(url):
        report.problems.append(Problem("", "no store here"))
        return report
    meta = st.try_meta(url)
    if meta is None:
        report.problems.append(Problem("", "not a jsaectl store (no readable jsaectl metadata)"))
        return report
    report.kind, report.format, report.complete = meta.get("kind"), meta.get("format"), bool(meta.get("complete"))
    report.lazy = bool(meta.get("lazy"))
    if report.format not in st.READABLE_FORMATS:
        report.problems.append(Problem("", f"store format {report.format} is not one this jsaectl reads"))
        return report
    holder = locks.live_holder(url, st.is_local(url))
    if holder is not None:
        report.notes.append(locks.busy_message(url, holder) + "; what is read may change")
    if not report.complete:
        report.problems.append(Problem("", "incomplete: the stage that writes it was interrupted or is still running"))
    if report.format < 2:
        report.notes.append("format 1: chunks carry no checksums and unwritten chunks read as fill values, "
                            "so damage can only be found where it shows (shapes, non-finite values)")
    group = zarr.open_group(store=st.checked_store(url, read_only=True), mode="r")
    arrays = _arrays(group)
    reporter.start(f"verify {url.rstrip('/').rsplit('/', 1)[-1]}", sum(_n_chunks(a) for a in arrays.values()), "chunks")
    raw = base_store(url, local=st.is_local(url), read_only=True)
    for name, array in arrays.items():
        _check_array(report, raw, name, array, meta)
        reporter.advance(_n_chunks(array))
    reporter.finish()
    report.arrays = len(arrays)
    report.problems += _shape_problems(meta, arrays, group)
    if meta.get("lazy") and report.ok:
        _check_lazy(report)
    return report


def _check_lazy(report: Report) -> None:
    """A sound lazy store is one whose model still computes its x: loaded (on the CPU) and
    checked against the store's fingerprint and witness, as every reader does."""
    from jsaectl.acts import Activations
    from jsaectl.errors import JsaectlError

    try:
        acts = Activations.open(report.url, device="cpu")
    except JsaectlError as e:
        report.problems.append(Problem("", f"its model cannot compute its x: {e.message}"))
        return
    if not acts.lazy_x.bit_identical:
        report.notes.append("x computed here matches the store's witness within float precision, not bit for bit "
                            "(another device or library build than the harvest's)")


def _arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    with warnings.catch_warnings():  # lock and spill files are not zarr nodes
        warnings.simplefilter("ignore")
        return {name: node for name, node in sorted(group.members(max_depth=None)) if isinstance(node, zarr.Array)}


def _n_chunks(array: zarr.Array) -> int:
    return math.prod(math.ceil(s / c) for s, c in zip(array.shape, array.chunks)) if array.shape else 1


def _chunk_indices(array: zarr.Array) -> np.ndarray:
    grid = [math.ceil(s / c) for s, c in zip(array.shape, array.chunks)]
    return np.stack(np.meshgrid(*[np.arange(g) for g in grid], indexing="ij"), -1).reshape(-1, len(grid)) if grid else \
        np.zeros((1, 0), dtype=int)


def _has_checksum(array: zarr.Array) -> bool:
    codecs = array.metadata.to_dict().get("codecs") or []
    return bool(codecs) and codecs[-1].get("name") == "crc32c"


def _check_array(report: Report, raw: Any, name: str, array: zarr.Array, meta: dict[str, Any]) -> None:
    checksummed = _has_checksum(array)
    if report.format >= 2 and not checksummed:
        report.problems.append(Problem(name, "has no crc32c checksum (not written by jsaectl format 2)"))
    sparse = name.startswith(SPARSE_PREFIXES)
    prototype = default_buffer_prototype()
    bits = name in ("x", "y") and meta.get("store_dtype") == "bfloat16"
    for index in map(tuple, _chunk_indices(array).tolist()):
        key = f"{name}/c" + "".join(f"/{i}" for i in index)
        report.chunks += 1
        buf = sync(raw.get(key, prototype))
        if buf is None:
            if not sparse and report.format >= 2:
                report.problems.append(Problem(name, "is missing", index))
            continue
        data = buf.as_numpy_array()
        report.bytes += len(data)
        if checksummed and not crc_ok(data):
            report.problems.append(Problem(name, "fails its checksum", index))
            continue
        try:
            values = array.blocks[index]
        except Exception as e:  # a format-1 chunk that does not decode
            report.problems.append(Problem(name, f"does not decode ({first_line(e)})", index))
            continue
        bad = _nonfinite(name, values, bits)
        if bad:
            report.problems.append(Problem(name, f"holds {bad:,} non-finite values", index))
        vocab = (meta.get("model") or {}).get("vocab_size")
        if name == "tokens" and vocab and ((values < 0) | (values >= vocab)).any():
            report.problems.append(Problem(name, f"holds token ids outside the vocabulary (0–{vocab - 1})", index))


def _nonfinite(name: str, values: np.ndarray, bits: bool) -> int:
    if bits:  # bfloat16 stored as its uint16 pattern
        return int(nonfinite(values, "bfloat16").sum())
    if values.dtype.kind != "f":
        return 0
    if name.startswith(_NAN_OK):
        return int(np.isinf(values).sum())
    if name in _NEG_INF_OK:
        return int((np.isnan(values) | np.isposinf(values)).sum())
    return int((~np.isfinite(values)).sum())


def _expected_shapes(meta: dict[str, Any], arrays: dict[str, zarr.Array]) -> dict[str, tuple[int, ...]]:
    kind = meta.get("kind")
    if kind == "activations":
        n, d, m = meta.get("n_tokens"), meta.get("d_model"), meta.get("d_mlp")
        shapes = {"x": (n, d), "y": (n, d), "tokens": (n,), "position": (n,), "mlp/W_in": (m, d), "mlp/b_in": (m,),
                  "mlp/W_out": (d, m), "mlp/b_out": (d,), "mlp/W_gate": (m, d), "mlp/b_gate": (m,)}
        if "vocab" in arrays:
            shapes["vocab_bytes/offsets"] = (arrays["vocab"].shape[0] + 1,)
        return shapes
    if kind == "jacobian":
        p, n, t, k = meta.get("stored_pairs"), meta.get("n_latents"), meta.get("n_tokens"), meta.get("k")
        shapes = {f"connections/{c}": (p,) for c in ("input", "output", "strength", "count", "mean_abs", "max_abs", "mean")}
        shapes |= {f"latents/{s}_{c}": (n,) for s in ("in", "out") for c in ("label", "count")}
        shapes |= {"per_token/J": (t, k, k), "per_token/in_idx": (t, k), "per_token/out_idx": (t, k), "per_token/token": (t,)}
        return shapes
    return {}


def _shape_problems(meta: dict[str, Any], arrays: dict[str, zarr.Array], group: zarr.Group) -> list[Problem]:
    if not meta.get("complete"):
        return []
    problems = [Problem(name, "is missing (a complete store has it)") for name in st.required(meta)
                if name not in arrays]
    if meta.get("kind") == "jsae":  # the SAEs' own attrs, k and shapes: what load_jsae refuses, said once
        missing = {p.array for p in problems}
        problems += [Problem(where, what) for where, what in jsae_problems(group, meta) if where not in missing]
    for name, shape in _expected_shapes(meta, arrays).items():
        if name in arrays and None not in shape and tuple(arrays[name].shape) != tuple(shape):
            problems.append(Problem(name, f"has shape {tuple(arrays[name].shape)}, the attrs say {tuple(shape)}"))
    history = {name: a.shape[0] for name, a in arrays.items() if name.startswith("history/")}
    if len(set(history.values())) > 1:
        problems.append(Problem("history", "arrays of different lengths: " + ", ".join(f"{k} {v}" for k, v in sorted(history.items()))))
    return problems


# --------------------------------------------------------------------------------------------
# repair


def repair(url: str, report: Report, reporter: Reporter = SILENT) -> Any:
    """Re-harvest the chunks ``report`` found damaged in an activations store, and rewrite
    damaged small arrays (MLP weights, vocabulary), so the store ends as a clean run would."""
    from jsaectl.configs import HarvestConfig
    from jsaectl.harvest import harvest

    if report.kind != "activations":
        raise ConfigError(f"--repair mends activations stores only, and {url} is a {report.kind} store",
                          hint=f"re-run the stage that wrote it with --overwrite ({_producer(report.kind)})")
    if report.format is None or report.format < 2:
        raise StoreError(f"{url} is a format-{report.format} store; --repair needs format 2",
                         hint="harvest it again with this jsaectl (and --overwrite)")
    meta = st.try_meta(url) or {}
    config, options = dict(meta.get("config", {})), dict(meta.get("run_options", {}))
    if config.get("dataset") == "-":
        raise ConfigError(f"{url} was harvested from stdin, which cannot be read again",
                          hint="harvest it again from a file with --overwrite")
    with st.writing(url, "activations", config, overwrite=False) as (store, _):
        per_chunk, small, unknown = _plan(report, store)
        if unknown:
            raise StoreError(f"--repair cannot recompute {', '.join(sorted(unknown))} of {url}",
                             hint="harvest it again with --overwrite")
        reporter.note(f"repairing {url}: {len(per_chunk)} chunk(s) of rows" + (f", {', '.join(sorted(small))}" if small else ""))
        store.update_meta(complete=False)
        _forget(store, per_chunk, small)
    cfg = HarvestConfig(**config, **{k: v for k, v in options.items() if k in ("batch_size", "device")}, out=url)
    return harvest(cfg, reporter)


def _producer(kind: str | None) -> str:
    return {"jsae": "jsaectl train", "jacobian": "jsaectl jacobian"}.get(kind or "", "jsaectl harvest")


def _plan(report: Report, store: st.Store) -> tuple[set[int], set[str], set[str]]:
    """(harvest chunks to recompute, small arrays to rewrite, what cannot be repaired)."""
    # Rows per harvest chunk: a lazy store writes its tokens in blocks of whole chunks.
    per_write = (store.meta.get("lazy") or {}).get("contexts_per_block") or store.meta["contexts_per_chunk"]
    rows = int(per_write) * int(store.meta["context_size"])
    per_chunk: set[int] = set()
    small: set[str] = set()
    unknown: set[str] = set()
    for p in report.problems:
        if p.array in ROW_ARRAYS and p.chunk is not None and store.group[p.array].chunks[0] == rows:
            per_chunk.add(p.chunk[0])
        elif p.array == "progress/chunk_contexts" and p.chunk is not None:
            per_chunk.add(p.chunk[0])
        elif p.array.startswith(("mlp/", "vocab")):
            small.add(p.array)
        elif p.array == "" and p.what.startswith("incomplete"):
            continue  # resuming is what repair does
        else:
            unknown.add(p.array or "the store")
    return per_chunk, small, unknown


def _forget(store: st.Store, chunks: set[int], small: set[str]) -> None:
    """Mark the chunks pending (so harvest recomputes them) and remove their damaged data and
    the damaged small arrays (so nothing reads them on the way)."""
    raw = base_store(store.url, local=st.is_local(store.url), read_only=False)
    flags = store.group["progress/chunk_contexts"]
    for c in sorted(chunks):
        for name in ROW_ARRAYS:
            if name in store.group:
                extra = "/0" * (store.group[name].ndim - 1)
                sync(raw.delete(f"{name}/c/{c}{extra}"))
        sync(raw.delete(f"progress/chunk_contexts/c/{c}"))
        flags[c] = -1
    for name in small:
        del store.group[name]
