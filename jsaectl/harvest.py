"""Stage 1: run a causal LM over text and store one layer's MLP input (and output).

The store is filled in *chunks*: a chunk is a fixed run of whole contexts and maps to exactly
one zarr chunk of every array, so no two writers (threads, shards, or a resumed run) ever
touch the same chunk. (A lazy store, which holds only tokens, is written in *blocks* of whole
chunks, one zarr chunk of its tokens each; below, "chunk" then means such a block.)
``progress/chunk_contexts[c]`` records how many contexts chunk ``c`` holds once its data are
written (-1 while pending); it is written after the data, so a run killed at any moment redoes
at most the chunks it had in flight.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch

from jsaectl import store as st
from jsaectl.acts import nonfinite, write_mlp
from jsaectl.data import describe_source, iter_contexts, open_source
from jsaectl import lazy
from jsaectl.lazy import token_dtype
from jsaectl.device import pick_device
from jsaectl.errors import ConfigError, DataError
from jsaectl.configs import HarvestConfig
from jsaectl.options import identity
from jsaectl.models import (
    LoadedModel,
    MLPSite,
    MLPTap,
    check_reconstruction,
    load_model,
    locate_mlp,
)
from jsaectl.progress import SILENT, Reporter
from jsaectl.text import pack, token_bytes
from jsaectl.units import format_count



@dataclass
class HarvestResult:
    store: str
    n_tokens: int
    d_model: int
    tokens_per_second: float
    complete: bool
    already_complete: bool = False

    def summary(self) -> dict[str, Any]:
        return {"store": self.store, "n_tokens": self.n_tokens, "d_model": self.d_model,
                "tokens_per_second": round(self.tokens_per_second, 1), "complete": self.complete}


def default_out(cfg: HarvestConfig) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(cfg.model.rstrip("/")) or "model").strip("-")
    kind = ("-random" if cfg.random_init else "") + ("-lazy" if cfg.lazy else "")
    return st.default_url(f"{slug}{kind}-L{cfg.layer}-{format_count(cfg.tokens)}", identity(cfg))


def _chunk_contexts(context_bytes: int) -> int:
    """Contexts per chunk: the fewest whole contexts that make a chunk of x >= 1 MiB."""
    return max(1, math.ceil(st.MIN_CHUNK_BYTES / context_bytes))


def _encode(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Activations to their storage form. bfloat16 has no numpy/zarr type: its raw bits are
    stored as uint16 (readers reinterpret them, see docs/store-format.md)."""
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return x.to(getattr(torch, dtype)).cpu().numpy()


def _grouped(contexts: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    while True:
        group = list(islice(contexts, size))
        if not group:
            return
        yield group


class _Writer:
    """Writes chunks on a background thread, at most ``depth`` behind the computation."""

    def __init__(self, depth: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jsaectl-writer")
        self._pending: list[Future] = []
        self._depth = depth

    def submit(self, fn: Any, *args: Any) -> None:
        while len(self._pending) >= self._depth:
            self._pending.pop(0).result()  # re-raises a failed write here
        self._pending.append(self._pool.submit(fn, *args))

    def drain(self) -> None:
        while self._pending:
            self._pending.pop(0).result()
        self._pool.shutdown()

    def abandon(self) -> None:
        """After an error or a signal: let the writes in flight finish (so nothing is being
        written once the store's lock is released), ignoring their own failures."""
        for future in self._pending:
            future.exception()
        self._pending = []
        self._pool.shutdown()


@dataclass
class _Layout:
    context_size: int
    contexts_per_chunk: int
    """What a reader reads at once: at least 1 MiB of x (as float32 for a lazy store)."""
    contexts_per_write: int
    """What a writer writes at once, one zarr chunk of every array: a chunk, or for a lazy store a
    block of whole chunks holding at least 1 MiB of tokens."""
    n_chunks: int  # of contexts_per_write each: the progress array's length
    n_tokens: int  # allocated; the final count may be smaller if the text runs out

    @property
    def rows(self) -> int:
        return self.contexts_per_write * self.context_size


def _layout(cfg: HarvestConfig, d_model: int, vocab_size: int) -> _Layout:
    item = 2 if cfg.dtype in ("float16", "bfloat16") else 4
    n_contexts = math.ceil(cfg.tokens / cfg.context_size)
    per_chunk = min(_chunk_contexts(cfg.context_size * d_model * item), n_contexts)
    per_write = per_chunk
    if cfg.lazy:  # whole chunks, so that chunk c's rows never straddle two writers' blocks
        token_bytes = np.dtype(token_dtype(vocab_size)).itemsize
        per_write = per_chunk * math.ceil(_chunk_contexts(cfg.context_size * token_bytes) / per_chunk)
        per_write = min(per_write, per_chunk * math.ceil(n_contexts / per_chunk))
    return _Layout(cfg.context_size, per_chunk, per_write, math.ceil(n_contexts / per_write), n_contexts * cfg.context_size)


def _create_arrays(store: st.Store, cfg: HarvestConfig, layout: _Layout, d_model: int, vocab_size: int) -> None:
    """Create the arrays, or open them as they are: never destructive, because shards of one
    harvest may run this at the same moment. A lazy store holds only the tokens (whose positions
    follow from the context size)."""
    g = store.group
    x_dtype = "uint16" if cfg.dtype == "bfloat16" else cfg.dtype
    rows, n = layout.rows, layout.n_tokens
    names = [] if cfg.lazy else ["x", "y"] if cfg.with_output else ["x"]
    for name in names:
        st.require_array(g, name, shape=(n, d_model), chunks=(rows, d_model), dtype=x_dtype, dimension_names=("token", "d_model"),
                         fill_value=0, compression=cfg.compression)
    ids = token_dtype(vocab_size) if cfg.lazy else "int32"
    st.require_array(g, "tokens", shape=(n,), chunks=(rows,), dtype=ids, dimension_names=("token",), fill_value=0)
    if not cfg.lazy:
        st.require_array(g, "position", shape=(n,), chunks=(rows,), dtype="int32", dimension_names=("token",), fill_value=0)
    # One tiny object per chunk: written last, atomically, by whoever owns the chunk.
    st.race_safe(g.require_group, "progress")
    if cfg.allow_nonfinite:
        st.require_array(g, "progress/nonfinite_zeroed", shape=(layout.n_chunks,), chunks=(1,), dtype="int64",
                         fill_value=0, compression="none", dimension_names=("chunk",))
    st.require_array(g, "progress/chunk_contexts", shape=(layout.n_chunks,), chunks=(1,), dtype="int32",
                     fill_value=-1, compression="none", dimension_names=("chunk",))


def _write_mlp_and_vocab(store: st.Store, site: Any, tokenizer: Any) -> None:
    """Small arrays, written whole (see ``_prepare``: before the progress array, or again when
    `jsaectl verify --repair` removed one)."""
    g = store.group
    write_mlp(store, site.weights, module=site.description)
    ids = [[i] for i in range(len(tokenizer))]
    st.write_array(g, "vocab", np.array(tokenizer.batch_decode(ids, clean_up_tokenization_spaces=False), dtype=object))
    data, offsets = pack(token_bytes(tokenizer))
    vb = st.race_safe(g.require_group, "vocab_bytes")
    st.write_array(vb, "data", data)
    st.write_array(vb, "offsets", offsets)


def _finalize(store: st.Store, layout: _Layout, extra: dict[str, Any]) -> int | None:
    """If every chunk is accounted for, trim to the tokens actually written and mark the store
    complete. Returns the final token count, or None while other shards are still working."""
    counts = store.group["progress/chunk_contexts"][...]
    if (counts < 0).any():
        return None
    n_tokens = int(counts.sum()) * layout.context_size
    if n_tokens < layout.n_tokens:  # the text ran out before --tokens
        for name in ("x", "y", "tokens", "position"):
            if name in store.group:
                arr = store.group[name]
                arr.resize((n_tokens,) + arr.shape[1:])
    if "nonfinite_zeroed" in store.group["progress"]:
        extra = {**extra, "nonfinite_zeroed": int(store.group["progress/nonfinite_zeroed"][...].sum())}
    store.mark_complete(n_tokens=n_tokens, **extra)
    return n_tokens


def _store_meta(cfg: HarvestConfig, loaded: LoadedModel, site: MLPSite, layout: _Layout, rel_err: float) -> dict[str, Any]:
    """What the store says about where its activations come from."""
    return {
        "d_model": site.weights.d_model,
        "d_mlp": site.weights.d_mlp,
        "context_size": cfg.context_size,
        "contexts_per_chunk": layout.contexts_per_chunk,
        "store_dtype": cfg.dtype,
        "model": loaded.provenance,
        "layer": cfg.layer,
        "mlp": {"family": site.family, "module": site.description, "activation": site.weights.activation,
                "gated": site.weights.gated, "reconstruction_rel_error": rel_err},
        "data": {"source": describe_source(cfg.dataset), "bos": cfg.bos and loaded.tokenizer.bos_token_id is not None,
                 "separator_token_id": loaded.tokenizer.eos_token_id},
        # How it ran (not part of the content), so `jsaectl verify --repair` recomputes a chunk exactly.
        "run_options": {"batch_size": cfg.batch_size, "device": cfg.device},
    }


def _load(cfg: HarvestConfig, reporter: Reporter) -> tuple[LoadedModel, MLPSite, torch.device]:
    device = pick_device(cfg.device)
    reporter.note(f"loading {cfg.model} on {device}" + (" (random init)" if cfg.random_init else ""))
    loaded = load_model(cfg.model, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
                        dtype=cfg.model_dtype, device=device, random_init=cfg.random_init, seed=cfg.seed,
                        init_scheme=cfg.init_scheme)
    site = locate_mlp(loaded.model, cfg.layer)
    _check_context_size(loaded.model, cfg.context_size)
    return loaded, site, device


def harvest(cfg: HarvestConfig, reporter: Reporter = SILENT) -> HarvestResult:
    cfg = cfg.resolved()
    url = st.resolve_url(cfg.out or default_out(cfg))
    shard = cfg.shard if cfg.shard[1] > 1 else None
    # A conflicting --out is refused now, not after minutes of model loading.
    existing = st.check_writable(url, "activations", identity(cfg), overwrite=cfg.overwrite, shard=shard)
    if existing is not None and existing.get("complete"):
        reporter.note(f"{url} is already complete ({format_count(existing['n_tokens'])} tokens); nothing to do")
        return HarvestResult(url, existing["n_tokens"], existing["d_model"], 0.0, True, already_complete=True)
    _check_size(cfg, url)
    pieces = open_source(cfg.dataset, split=cfg.split, subset=cfg.subset, text_column=cfg.text_column)
    loaded, site, device = _load(cfg, reporter)
    d_model = site.weights.d_model
    _check_size(cfg, url, d_model)
    layout = _layout(cfg, d_model, len(loaded.tokenizer))
    # tokens/s counts reading, tokenizing, (computing) and writing the rows: not loading the model,
    # nor checking it on the first batch and recording what a lazy store needs (fixed costs)
    started = time.perf_counter()
    contexts = iter_contexts(pieces, loaded.tokenizer, cfg.context_size, bos=cfg.bos)
    chunks = _grouped(islice(contexts, layout.n_tokens // cfg.context_size), layout.contexts_per_write)
    first = next(chunks, None)
    if first is None:
        raise DataError(f"{describe_source(cfg.dataset)} holds fewer than {cfg.context_size} tokens: not one context",
                        hint="give more text, or a smaller --context-size")
    tap = MLPTap(loaded.model, site)
    checking = time.perf_counter()
    first_ids = torch.from_numpy(np.stack(first[: cfg.batch_size])).long().to(device)
    x, y = tap(first_ids, with_output=True)
    rel_err = check_reconstruction(site, x, y, cfg.model_dtype)  # refuses before anything is written
    reporter.note(f"{site.family} layer {cfg.layer}/{site.n_layers}: {site.description}; d_model={d_model}, "
                  f"d_mlp={site.weights.d_mlp}; MLP recomputed from stored weights to {rel_err:.1e}"
                  + ("; storing tokens only (--lazy)" if cfg.lazy else ""))

    with st.writing(url, "activations", identity(cfg), overwrite=cfg.overwrite, shard=shard) as (store, resumed):
        extra = _prepare(store, cfg, loaded, tap, layout, rel_err, first_ids, x)
        started += time.perf_counter() - checking
        todo = _todo(store, cfg, layout, resumed, reporter)
        written = _run_chunks(cfg, store, layout, tap, device, [first], chunks, set(todo), reporter)
        elapsed = time.perf_counter() - started
        tap.close()
        n_final = _finalize(store, layout, extra)
    i, n = cfg.shard
    if n_final is None:
        reporter.note(f"shard {i}/{n} finished; the store completes when every shard has")
    elif n_final < cfg.tokens:
        reporter.note(f"the text ran out at {n_final:,} tokens of the {cfg.tokens:,} asked for (--tokens)")
        if cfg.out is None:  # a default name says how many tokens the store holds
            url = _rename(url, n_final)
    return HarvestResult(url, n_final if n_final is not None else written, d_model,
                         written / elapsed if elapsed > 0 and written else 0.0, n_final is not None)


def _prepare(store: st.Store, cfg: HarvestConfig, loaded: LoadedModel, tap: MLPTap, layout: _Layout, rel_err: float,
             first_ids: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
    """Everything but the rows: the small arrays, the big arrays and the store's attrs (a lazy
    store's fingerprint and witness too, from harvest's first batch ``first_ids`` and its x).

    The progress array is created after the small and big arrays, so its presence means they
    exist. Then the big arrays are not touched again: a run killed after _finalize trimmed them
    (and before it marked the store complete) would otherwise find them the wrong size. The small
    arrays are rewritten when one is missing (`jsaectl verify --repair` removes damaged ones). A
    lazy store's record comes last, and is written again whenever it is incomplete."""
    site = tap.site
    small = SMALL_ARRAYS + (("mlp/W_gate",) if site.weights.gated else ())
    if "progress" not in store.group or "chunk_contexts" not in store.group["progress"]:
        _write_mlp_and_vocab(store, site, loaded.tokenizer)
        _create_arrays(store, cfg, layout, site.weights.d_model, len(loaded.tokenizer))
    elif not all(name in store.group for name in small):
        _write_mlp_and_vocab(store, site, loaded.tokenizer)
    extra = _store_meta(cfg, loaded, site, layout, rel_err)
    if cfg.lazy:
        known = store.meta.get("lazy")
        if known is None or not all(name in store.group for name in LAZY_ARRAYS):
            local = os.path.isdir(os.path.expanduser(cfg.model))  # readers load it from anywhere: an absolute path
            known = lazy.record(store, loaded, tap, first_ids, x, cfg.batch_size, layout.contexts_per_write,
                                os.path.abspath(os.path.expanduser(cfg.model)) if local else None)
        extra["lazy"] = known
    store.update_meta(**extra)
    return extra


def _todo(store: st.Store, cfg: HarvestConfig, layout: _Layout, resumed: bool, reporter: Reporter) -> list[int]:
    """This shard's chunks still to write (by the progress array)."""
    counts = store.group["progress/chunk_contexts"][...]
    i, n = cfg.shard
    mine = [c for c in range(layout.n_chunks) if c % n == i]
    todo = [c for c in mine if counts[c] < 0]
    if resumed and len(todo) < len(mine):
        reporter.note(f"resuming {store.url}: {len(mine) - len(todo)} of {len(mine)} chunks already written")
    return todo


def _rename(url: str, n_tokens: int) -> str:
    """Rename a default-named local store after the tokens it holds (its config hash stays, so
    a re-run of the same command still finds it)."""
    digest = url.rsplit("-", 1)[-1]
    target = os.path.abspath(os.path.join(os.path.dirname(url), re.sub(
        r"-L(\d+)-[^-]+-" + re.escape(digest) + "$", f"-L\\1-{format_count(n_tokens)}-{digest}", os.path.basename(url))))
    if not st.is_local(url) or target == url or os.path.exists(target):
        return url
    os.rename(url, target)
    return target


SMALL_ARRAYS = ("mlp/W_in", "mlp/b_in", "mlp/W_out", "mlp/b_out", "vocab", "vocab_bytes/data", "vocab_bytes/offsets")
LAZY_ARRAYS = ("lazy/witness_x", "lazy/witness_rows")
# Beyond this many contexts a store's bookkeeping alone would not fit in memory.
MAX_CONTEXTS = 1 << 31


def _check_size(cfg: HarvestConfig, url: str, d_model: int | None = None) -> None:
    """Refuse a --tokens that cannot be stored: more contexts than a store can index (before
    the model loads), or, once d_model is known, more bytes than a local disk has free."""
    n_contexts = math.ceil(cfg.tokens / cfg.context_size)
    if n_contexts > MAX_CONTEXTS:
        raise ConfigError(f"--tokens {format_count(cfg.tokens)} is more than a store can hold "
                          f"({format_count(MAX_CONTEXTS * cfg.context_size)} tokens at --context-size {cfg.context_size})",
                          hint="harvest fewer tokens, e.g. --tokens 100M")
    if d_model is None or not st.is_local(url) or cfg.lazy:  # a lazy store is ~2 bytes a token
        return
    import shutil

    probe = url
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    item = 4 if cfg.dtype == "float32" else 2
    need = n_contexts * cfg.context_size * d_model * item * (2 if cfg.with_output else 1)
    free = shutil.disk_usage(probe).free
    if 0.8 * need > free:  # zstd saves ~10% on activations, never half
        raise ConfigError(f"--tokens {format_count(cfg.tokens)} at d_model {d_model} needs about {need / 1e9:,.1f} GB and "
                          f"{probe} has {free / 1e9:,.1f} GB free",
                          hint=f"harvest with --lazy (the tokens only, about {2 * n_contexts * cfg.context_size / 1e9:,.1f} GB; "
                          "readers compute x with the model), harvest fewer tokens, or choose an --out with more space")


def _check_context_size(model: torch.nn.Module, context_size: int) -> None:
    limit = next((getattr(model.config, k) for k in ("max_position_embeddings", "n_positions", "seq_length")
                  if isinstance(getattr(model.config, k, None), int)), None)
    if limit is not None and context_size > limit:
        raise ConfigError(f"--context-size {context_size} is longer than the model's {limit} positions",
                          hint=f"use --context-size {limit} or less")


def _run_chunks(cfg: HarvestConfig, store: st.Store, layout: _Layout, tap: Any, device: torch.device,
                head: list[list[np.ndarray]], rest: Iterator[list[np.ndarray]], todo: set[int], reporter: Reporter) -> int:
    """Forward the chunks in ``todo`` and hand them to the writer; mark the chunks past the end
    of the text as empty. Returns the number of tokens computed."""
    g = store.group
    arrays = {name: g[name] for name in ("x", "y", "tokens", "position") if name in g}
    flags = g["progress/chunk_contexts"]
    T = layout.context_size
    positions = np.tile(np.arange(T, dtype=np.int32), layout.contexts_per_write)
    writer = _Writer()
    computed = 0

    zeroed = g["progress/nonfinite_zeroed"] if cfg.allow_nonfinite else None

    def write(c: int, x: np.ndarray | None, y: np.ndarray | None, toks: np.ndarray, n_zeroed: int) -> None:
        lo, hi = c * layout.rows, c * layout.rows + len(toks)
        for name, values in (("x", x), ("y", y), ("position", positions[: len(toks)])):
            if name in arrays and values is not None:
                arrays[name][lo:hi] = values
        arrays["tokens"][lo:hi] = toks
        if zeroed is not None:
            zeroed[c] = n_zeroed
        flags[c] = len(toks) // T  # last: the chunk counts only once its data are on disk

    reporter.start("harvest", sum(min(layout.rows, layout.n_tokens - t * layout.rows) for t in todo), "tokens")
    last = max(todo, default=-1)
    c, text_ended = -1, True
    try:
        for c, contexts in enumerate(_chain(head, rest)):
            if c > last:  # nothing of ours beyond this point
                text_ended = False
                break
            if c not in todo:
                continue
            x_all, y_all = (None, None) if cfg.lazy else _forward(cfg, tap, device, contexts)
            n_zeroed = sum(_check_finite(v, cfg, c * layout.rows, T, name)
                           for name, v in (("x", x_all), ("y", y_all)) if v is not None)
            toks = np.concatenate(contexts)
            writer.submit(write, c, x_all, y_all, toks.astype(arrays["tokens"].dtype), n_zeroed)
            computed += len(toks)
            reporter.advance(len(toks))
        if text_ended:  # the text ended before --tokens: our chunks past the end hold nothing
            for empty in sorted(t for t in todo if t > c):
                writer.submit(flags.__setitem__, empty, 0)
    except BaseException:
        writer.abandon()
        raise
    finally:
        reporter.finish()
    writer.drain()
    return computed


def _forward(cfg: HarvestConfig, tap: Any, device: torch.device, contexts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """x (and y) of a chunk's contexts in their storage form, in batches of --batch-size
    contexts from the chunk's first (the composition a lazy store's readers repeat)."""
    xs, ys = [], []
    for b in range(0, len(contexts), cfg.batch_size):
        ids = torch.from_numpy(np.stack(contexts[b : b + cfg.batch_size])).long().to(device)
        x, y = tap(ids, with_output=cfg.with_output)
        xs.append(_encode(x.reshape(-1, x.shape[-1]), cfg.dtype))
        if y is not None:
            ys.append(_encode(y.reshape(-1, y.shape[-1]), cfg.dtype))
    return np.concatenate(xs), (np.concatenate(ys) if ys else None)


def _chain(head: list[list[np.ndarray]], rest: Iterator[list[np.ndarray]]) -> Iterator[list[np.ndarray]]:
    yield from head
    yield from rest


def _check_finite(values: np.ndarray, cfg: HarvestConfig, first_row: int, context_size: int, name: str) -> int:
    """Refuse a chunk holding NaN or inf (stored, it would poison every later stage), naming the
    rows; or, with --allow-nonfinite, set those values to 0 in place and return how many."""
    bad = nonfinite(values, cfg.dtype)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return 0
    if cfg.allow_nonfinite:
        values[bad] = 0
        return n_bad
    rows = np.flatnonzero(bad.any(axis=1)) + first_row
    where = f"rows {rows[0]:,}–{rows[-1]:,} (contexts {rows[0] // context_size:,}–{rows[-1] // context_size:,})"
    if cfg.dtype == "float16":
        raise DataError(f"{n_bad:,} values of {name} are NaN, inf or beyond float16's range (|v| > 65504) in {where}",
                        hint="harvest with --dtype bfloat16 or float32, or --allow-nonfinite to store them as 0 (with --overwrite)")
    raise DataError(f"the model produced {n_bad:,} non-finite values (NaN or inf) of {name} in {where}",
                    hint="check the model and --model-dtype, or pass --allow-nonfinite to store them as 0 (with --overwrite)")
