"""Stage 3: which input latents compute which output latents, over real tokens.

For each analysed token the closed-form Jacobian ``J [k_out, k_in]`` between the active
latents of the two SAEs is computed (evaluated where training evaluated it). From it:

* sparsity as the paper reports it: per token, the count of |J| above each threshold,
  averaged over tokens, and as a fraction of the k² entries; and scale-free measures, which
  fall only when the Jacobian's mass concentrates, not when all of it shrinks: the count of
  |J| above multiples of the token's rms |J|, the entries that hold 90% of Σ|J| (``mass90``)
  and the Gini coefficient of |J| (see sparsity.py);
* connections: per (input latent, output latent) pair over the tokens where both are active
  (activation > 0): tokens co-active, mean |J|, max |J|, mean signed J. Their *strength* is
  the sum of |J| over the analysed tokens divided by their number (how much of the typical
  token's Jacobian the pair carries), and they are stored strongest first;
* a histogram of |J| on a log scale, and each latent's top-activating tokens as its label.

Connections are accumulated exactly in bounded memory: beyond ``max_pairs`` distinct pairs
the sums spill to disk in hash partitions, reduced one partition at a time at the end; the
``max_pairs`` strongest pairs are stored.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from jsaectl import store as st
from jsaectl.configs import JacobianConfig
from jsaectl.options import identity
from jsaectl import connections, sparsity, tracking
from jsaectl.connections import Connection
from jsaectl.jsae import active_pairs
from jsaectl.trained import LoadedJSAE
from jsaectl.text import label
from jsaectl.progress import SILENT, Reporter
from jsaectl.topk import TopExamples, slots
from jsaectl.units import format_count

HIST_EDGES = np.logspace(-6, 2, 33)  # 4 bins a decade from 1e-6 to 1e2; |J| outside goes to the end bins


@dataclass
class JacobianResult:
    store: str
    n_tokens: int
    k: int
    sparsity: dict[str, dict[str, float]]
    top: list[Connection]
    histogram: tuple[np.ndarray, np.ndarray]
    tokens_per_second: float
    linearity: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"store": self.store, "n_tokens": self.n_tokens, "k": self.k, "sparsity": self.sparsity,
                "tokens_per_second": round(self.tokens_per_second, 1),
                "top_connections": [asdict(c) for c in self.top],
                **({"linearity": self.linearity} if self.linearity else {})}


def pair_stats(J: torch.Tensor) -> torch.Tensor:
    """``[P, 4]`` float64 on the CPU: the statistics of single entries ``J [P]`` (count 1, |J|, J,
    |J|), as :func:`reduce_pairs` sums them per pair."""
    absJ = J.abs().double().cpu()
    return torch.stack([torch.ones_like(absJ), absJ, J.double().cpu(), absJ], 1)


def reduce_pairs(keys: torch.Tensor, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per distinct pair key: ``(keys [U], inverse [P] (each row's pair), stats [U, 4])`` with
    stats = (count, Σ|J|, Σ J, max |J|) summed over the rows of ``stats`` (see :func:`pair_stats`)."""
    uniq, inverse = torch.unique(keys, return_inverse=True)
    out = torch.zeros(len(uniq), 4, dtype=torch.float64)
    out[:, :3].index_add_(0, inverse, stats[:, :3])
    out[:, 3].scatter_reduce_(0, inverse, stats[:, 3], "amax")
    return uniq, inverse, out


class _PairAccumulator:
    """Exact sums per (input, output) latent pair, keyed by ``input * n + output``, in bounded
    memory: when more than ``max_pairs`` distinct pairs are held, they are spilled to disk in
    ``PARTITIONS`` key-hash partitions, each reduced on its own at the end."""

    PARTITIONS = 64

    def __init__(self, n: int, max_pairs: int, spill_dir: str) -> None:
        self.n, self.max_pairs, self.spill_dir = n, max_pairs, spill_dir
        self.keys = torch.zeros(0, dtype=torch.int64)
        self.stats = torch.zeros(0, 4, dtype=torch.float64)  # count, sum |J|, sum J, max |J|
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_size = 0
        self._spills = 0

    def add(self, keys: torch.Tensor, J: torch.Tensor) -> None:
        self._pending.append((keys.cpu(), pair_stats(J)))
        self._pending_size += keys.numel()
        if self._pending_size > self.max_pairs:
            self._reduce_pending()

    def _reduce_pending(self) -> None:
        if self._pending:
            self.keys, _, self.stats = reduce_pairs(torch.cat([self.keys] + [k for k, _ in self._pending]),
                                                    torch.cat([self.stats] + [s for _, s in self._pending]))
            self._pending, self._pending_size = [], 0
        if len(self.keys) > self.max_pairs:
            self._spill()

    def _spill(self) -> None:
        part = (self.keys % self.PARTITIONS).numpy()
        for p in range(self.PARTITIONS):
            sel = part == p
            np.save(os.path.join(self.spill_dir, f"p{p:02d}_{self._spills:05d}_keys.npy"), self.keys.numpy()[sel])
            np.save(os.path.join(self.spill_dir, f"p{p:02d}_{self._spills:05d}_stats.npy"), self.stats.numpy()[sel])
        self._spills += 1
        self.keys, self.stats = torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4, dtype=torch.float64)

    def finish(self, keep: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The ``keep`` strongest pairs (exact sums) and the number of distinct pairs seen."""
        self._reduce_pending()
        if not self._spills:
            order = torch.argsort(self.stats[:, 1], descending=True, stable=True)[:keep]
            return self.keys[order], self.stats[order], len(self.keys)
        self._spill()
        best_k, best_s, distinct = torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4, dtype=torch.float64), 0
        for p in range(self.PARTITIONS):
            parts = [(np.load(os.path.join(self.spill_dir, f"p{p:02d}_{i:05d}_keys.npy")),
                      np.load(os.path.join(self.spill_dir, f"p{p:02d}_{i:05d}_stats.npy"))) for i in range(self._spills)]
            k, _, s = reduce_pairs(torch.from_numpy(np.concatenate([a for a, _ in parts])),
                                   torch.from_numpy(np.concatenate([b for _, b in parts])))
            distinct += len(k)
            best_k, best_s = torch.cat([best_k, k]), torch.cat([best_s, s])
            if len(best_k) > keep:
                top = torch.topk(best_s[:, 1], keep).indices
                best_k, best_s = best_k[top], best_s[top]
        order = torch.argsort(best_s[:, 1], descending=True, stable=True)
        return best_k[order], best_s[order], distinct


def default_out(cfg: JacobianConfig) -> str:
    return st.default_url(f"jacobian-{st.stem(cfg.jsae, 'jsae')}-{format_count(cfg.tokens)}", identity(cfg))


def jacobian(cfg: JacobianConfig, reporter: Reporter = SILENT) -> JacobianResult:
    from jsaectl.device import pick_device

    if cfg.wandb:
        tracking.require()  # a missing package is said before anything is created
    st.open_store(cfg.jsae, "jsae")  # computes from a JSAE; a jacobian store is asked with `jsaectl connections`
    model = LoadedJSAE.open(cfg.jsae, acts=cfg.acts, device=pick_device(cfg.device), include_bos=cfg.include_bos)
    scanned = min(cfg.tokens, model.acts.n_tokens)  # rows read; BOS rows among them are skipped
    url = st.resolve_url(cfg.out or default_out(cfg))
    reads = [model.store.url, model.acts.url]
    existing = st.check_writable(url, "jacobian", identity(cfg), overwrite=cfg.overwrite, reads=reads)
    if existing is not None and existing.get("complete"):
        reporter.note(f"{url} is already complete; showing it")
        return _logged(cfg, load_result(url, cfg.top), model.store, reporter)
    with st.writing(url, "jacobian", identity(cfg), overwrite=cfg.overwrite, reads=reads) as (store, _):
        _analyse(cfg, model, scanned, store, reporter)
    return _logged(cfg, load_result(url, cfg.top), model.store, reporter)


def _logged(cfg: JacobianConfig, result: JacobianResult, jsae: st.Store, reporter: Reporter) -> JacobianResult:
    """``result``, added to the W&B run of its JSAE (store ``jsae``) first when --wandb asks for it."""
    if cfg.wandb:
        tracking.log_jacobian(cfg.wandb, result, jsae, reporter)
    return result


def _analyse(cfg: JacobianConfig, model: LoadedJSAE, scanned: int, store: st.Store, reporter: Reporter) -> None:
    """One pass over the first ``scanned`` rows; writes everything and marks ``store`` complete.
    (An interrupted analysis starts again: it is minutes, and its sums are not checkpointed.)"""
    n = model.n_latents
    n_tokens = model.analysed_rows(scanned)
    summary = sparsity.Summary(model.k, cfg.thresholds, cfg.normalised_thresholds, model.device)
    hist = np.zeros(len(HIST_EDGES) + 1, dtype=np.int64)
    spill = st.spill_dir(store.url)
    os.makedirs(spill, exist_ok=True)
    pairs = _PairAccumulator(n, cfg.max_pairs, spill)
    tops = {side: TopExamples(n, cfg.label_examples) for side in ("in", "out")}
    per_token = _PerTokenWriter(n_tokens, model.k) if cfg.per_token else None
    if per_token:
        per_token.create(store)
    reporter.note(f"Jacobians of {model.store.url} over {n_tokens:,} tokens of {model.acts.url}")
    reporter.start("jacobian", n_tokens, "tokens")
    began = time.perf_counter()
    for batch in model.batches(scanned, cfg.batch_size):
        J = batch.J  # [B, k_out, k_in]: rows are batch.jac_out's latents
        summary.add(J)
        absJ = J.abs()
        hist += np.bincount(np.searchsorted(HIST_EDGES, absJ[absJ > 0].cpu().numpy()), minlength=len(HIST_EDGES) + 1)
        both, key = active_pairs(batch.code_in, batch.jac_out, n)  # [B, k_out, k_in] each
        pairs.add(key[both], J[both])
        for side, code in (("in", batch.code_in), ("out", batch.code_out)):
            tops[side].update_codes(code.indices.cpu(), code.values.cpu(), batch.rows.cpu())
        if per_token:
            per_token.write(store, batch)
        reporter.advance(len(batch.rows))
    elapsed = time.perf_counter() - began
    reporter.finish()
    keys, stats, distinct = pairs.finish(cfg.max_pairs)
    shutil.rmtree(spill, ignore_errors=True)
    labels = {side: _labels(tops[side], model.acts) for side in ("in", "out")}
    _write(store, keys, stats, n, n_tokens, labels, tops, hist)
    _write_pair_examples(store, keys[: cfg.example_connections], n,
                         _pair_examples(model, keys[: cfg.example_connections], scanned, cfg, reporter))
    linearity = None
    if cfg.linearity:
        from jsaectl.linearity import linearity_checks

        reporter.note(f"linearity and ablation checks on {cfg.linearity} sampled active pairs")
        linearity = linearity_checks(model, scanned, cfg.linearity, cfg.seed)
    store.mark_complete(
        jsae_store=model.store.url, acts_store=model.acts.url, n_tokens=n_tokens, k=model.k, n_latents=n,
        jacobian_at=model.jacobian_at, sparsity=summary.result(), tokens_per_second=n_tokens / elapsed, linearity=linearity,
        distinct_pairs=distinct, stored_pairs=len(keys), model=model.store.meta.get("model"),
        layer=model.store.meta.get("layer"), lam=model.store.meta.get("lam"),
    )


@torch.no_grad()
def _pair_examples(model: LoadedJSAE, keys: torch.Tensor, scanned: int, cfg: JacobianConfig, reporter: Reporter) -> TopExamples:
    """The strongest tokens (by |J|) of each of the connections ``keys`` (``input * n + output``,
    ascending or not), from a second pass over the same rows that computes the codes and, only
    where one of these connections is active, its J entry: so that `maxact --connection` on
    the store answers at once."""
    n, order = model.n_latents, torch.argsort(keys)
    sorted_keys, order = keys[order].to(model.device), order.to(model.device)
    tops = TopExamples(len(keys), cfg.label_examples)
    if not len(keys):
        return tops
    reporter.start("connection examples", model.analysed_rows(scanned), "tokens")
    for rows, x, y in model.acts.batches(scanned, cfg.batch_size, model.include_bos, model.device):
        out = model.jsae(x, y, jacobian="codes")
        both, key = active_pairs(out.code_in, out.jac_out, n)  # [B, k_out, k_in] each
        key = key[both]
        pos = torch.searchsorted(sorted_keys, key).clamp(max=len(keys) - 1)
        hit = sorted_keys[pos] == key
        token, o_slot, i_slot = (idx[hit] for idx in torch.nonzero(both, as_tuple=True))
        J = model.jsae.entries(x, out, token, i_slot, o_slot)
        tops.update(order[pos[hit]].cpu(), J.abs().cpu(), torch.from_numpy(rows)[token.cpu()])
        reporter.advance(len(rows))
    reporter.finish()
    return tops


def _write_pair_examples(store: st.Store, keys: torch.Tensor, n: int, tops: TopExamples) -> None:
    g = store.group.require_group("examples")
    st.write_array(g, "pair_input", (keys // n).numpy().astype(np.int32))
    st.write_array(g, "pair_output", (keys % n).numpy().astype(np.int32))
    st.write_array(g, "pair_rows", tops.rows.numpy())
    st.write_array(g, "pair_values", tops.values.numpy())


def latent_labels(model: LoadedJSAE, latents: dict[str, list[int]], n_tokens: int, batch_size: int,
                  reporter: Reporter = SILENT, examples: int = 20) -> dict[tuple[str, int], str]:
    """Labels of some latents of each side (``{"in": [...], "out": [...]}``), computed as the
    jacobian stage computes them, over the first ``n_tokens`` rows: ``{(side, latent): label}``."""
    tops = {side: TopExamples(len(ids), examples) for side, ids in latents.items()}
    slot = {side: slots(ids, model.n_latents) for side, ids in latents.items()}
    reporter.start("labels", model.analysed_rows(n_tokens), "tokens")
    for batch in model.batches(n_tokens, batch_size, jacobian="off"):
        for side, code in (("in", batch.code_in), ("out", batch.code_out)):
            tops[side].update_codes(code.indices.cpu(), code.values.cpu(), batch.rows.cpu(), slot[side])
        reporter.advance(len(batch.rows))
    reporter.finish()
    found = {side: _labels(tops[side], model.acts) for side in latents}
    return {(side, latent): str(found[side][i]) for side, ids in latents.items() for i, latent in enumerate(ids)}


def labels_for(model: LoadedJSAE, shown: dict[str, list[int]], n_tokens: int, batch_size: int,
               reporter: Reporter = SILENT) -> tuple[dict[tuple[str, int], str], str]:
    """Labels of the latents ``shown`` (``{"in": [...], "out": [...]}``) and where they come from:
    the jacobian store the JSAE was opened through, or else computed over the first ``n_tokens``
    rows of its activations (``batch_size`` tokens a batch)."""
    jac = model.jacobian
    if jac is not None:
        stored = {side: jac.array(f"latents/{side}_label")[...] for side in shown}
        return {(side, i): str(stored[side][i]) for side, ids in shown.items() for i in ids}, f"from {jac.url}"
    n_tokens = min(n_tokens, model.acts.n_tokens)
    reporter.note(f"labelling {sum(map(len, shown.values()))} latents from {n_tokens:,} tokens of {model.acts.url} "
                  "(give a jacobian store for its labels, at once)")
    found = latent_labels(model, shown, n_tokens, batch_size, reporter)
    return found, f"computed from {model.analysed_rows(n_tokens):,} tokens of {model.acts.url}"


def _labels(tops: TopExamples, acts: Any) -> np.ndarray:
    rows = tops.rows.numpy()
    valid = rows >= 0
    tokens = np.full(rows.shape, -1, dtype=np.int64)
    if valid.any():
        flat = np.unique(rows[valid])
        lookup = _read_tokens(acts, flat)
        tokens[valid] = lookup[np.searchsorted(flat, rows[valid])]
    vocab = acts.vocab
    return np.array([label(tokens[i], vocab) for i in range(len(tokens))], dtype=object)


def _read_tokens(acts: Any, rows: np.ndarray) -> np.ndarray:
    """Token ids at sorted row numbers, reading each needed reader chunk (``rows_per_chunk`` rows) once."""
    arr = acts.store.group["tokens"]
    out = np.empty(len(rows), dtype=np.int64)
    size = acts.rows_per_chunk
    chunks = rows // size
    for c in np.unique(chunks):
        lo = int(c) * size
        block = arr[lo : min(acts.n_tokens, lo + size)]
        sel = chunks == c
        out[sel] = block[rows[sel] - lo]
    return out


def _write(store: st.Store, keys: torch.Tensor, stats: torch.Tensor, n: int, n_tokens: int,
           labels: dict[str, np.ndarray], tops: dict[str, TopExamples], hist: np.ndarray) -> None:
    keys, stats = keys.numpy(), stats.numpy()  # strongest first
    connections.write(store.group, {
        "input": (keys // n).astype(np.int32), "output": (keys % n).astype(np.int32),
        "count": stats[:, 0].astype(np.int64), "strength": (stats[:, 1] / n_tokens).astype(np.float32),
        "mean_abs": (stats[:, 1] / stats[:, 0]).astype(np.float32), "max_abs": stats[:, 3].astype(np.float32),
        "mean": (stats[:, 2] / stats[:, 0]).astype(np.float32),
    }, n)
    lat = store.group.require_group("latents")
    for side in ("in", "out"):
        st.write_array(lat, f"{side}_label", labels[side])
        st.write_array(lat, f"{side}_count", tops[side].count.numpy())
        st.write_array(lat, f"{side}_total", tops[side].total.numpy())
        st.write_array(lat, f"{side}_top_rows", tops[side].rows.numpy())
        st.write_array(lat, f"{side}_top_values", tops[side].values.numpy())
    hg = store.group.require_group("histogram")
    st.write_array(hg, "edges", HIST_EDGES)
    st.write_array(hg, "counts", hist)


class _PerTokenWriter:
    """per_token/ arrays: one row per analysed token, ``token`` giving its row in the activations store."""

    def __init__(self, n_tokens: int, k: int) -> None:
        self.n_tokens, self.k = n_tokens, k
        self.rows_per_chunk = max(1, (1 << 20) // (k * k * 4))
        self.cursor = 0

    def create(self, store: st.Store) -> None:
        g = store.group.require_group("per_token")
        n, k, r = self.n_tokens, self.k, self.rows_per_chunk
        st.create_array(g, "J", shape=(n, k, k), chunks=(r, k, k), dtype="float32", dimension_names=("token", "output", "input"))
        for name in ("in_idx", "out_idx"):
            st.create_array(g, name, shape=(n, k), chunks=(r * 8, k), dtype="int32", dimension_names=("token", "slot"))
        st.create_array(g, "token", shape=(n,), chunks=(r * 64,), dtype="int64", dimension_names=("token",))

    def write(self, store: st.Store, batch: Any) -> None:
        g = store.group["per_token"]
        lo = self.cursor
        hi = self.cursor = lo + len(batch.rows)
        g["J"][lo:hi] = batch.J.cpu().numpy()
        g["in_idx"][lo:hi] = batch.code_in.indices.cpu().numpy().astype(np.int32)
        g["out_idx"][lo:hi] = batch.jac_out.indices.cpu().numpy().astype(np.int32)
        g["token"][lo:hi] = batch.rows.cpu().numpy()


def load_result(url: str, top: int = 20) -> JacobianResult:
    """Read a complete jacobian store back: its summary and its ``top`` strongest connections
    (`jsaectl connections` asks it anything else)."""
    store = st.open_store(url, "jacobian")
    meta, g = store.meta, store.group
    top_list = connections.query(store, top=top)
    st.check_finite(np.array(_numbers(meta["sparsity"]), dtype=float), f"{store.url}: the sparsity summary")
    return JacobianResult(store.url, meta["n_tokens"], meta["k"], meta["sparsity"], top_list,
                          (g["histogram/edges"][...], g["histogram/counts"][...]), meta.get("tokens_per_second", 0.0),
                          meta.get("linearity"), details={"jacobian_at": meta.get("jacobian_at", "x")})


def _numbers(tree: Any) -> list[float]:
    if isinstance(tree, dict):
        return [v for value in tree.values() for v in _numbers(value)]
    return [float(tree)] if isinstance(tree, (int, float)) else []
