"""Max-activating examples: the contexts where a latent (or a connection) is strongest.

One streaming pass over the activations store encodes every token with the SAE in question (both, for a connection) and
keeps the top examples per tracked latent (``topk.TopExamples``: memory is latents ×
examples, never the store). Then the text around each example is rebuilt from the store's
tokens and vocab, with the latent's activation at every neighbouring token.

* ``latents``: examples of these latents of one SAE (``side`` "in" or "out");
* ``top_latents``: the N latents of ``side`` with the largest total activation;
* ``connection``: tokens where input latent I and output latent O are both active, ranked
  by |J[O, I]| at that token or by the product of the two activations.

Given a jacobian store, maxact answers from the examples it holds (each latent's strongest
activations, and the strongest tokens by |J| of its strongest connections, over the tokens it
analysed): no scan. It scans the activations only when asked for what the store does not hold
(more examples, another --acts or --tokens, a different --include-bos, a connection it keeps none for,
--rank-by product, an older store without the totals --top-latents ranks by) and says which it did
(``MaxactResult.source``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from jsaectl import store as st
from jsaectl.configs import MaxactConfig
from jsaectl.trained import Batch, LoadedJSAE
from jsaectl.sae import Encoded
from jsaectl.progress import SILENT, Reporter
from jsaectl.topk import TopExamples, slots



@dataclass
class Example:
    rank: int
    activation: float
    """The ranking value: the latent's activation, or |J| / the product for a connection."""
    row: int
    """Token index (row) in the activations store."""
    tokens: list[str]
    activations: list[float]
    """The latent's activation at each shown token (for a connection: the output latent's)."""
    focus: int
    """Index of the example token in ``tokens``."""
    extra: dict[str, float] = field(default_factory=dict)
    inputs: list[float] | None = None
    """For a connection: the input latent's activation at each shown token."""


@dataclass
class LatentExamples:
    latent: int | str
    side: str
    label: str
    count: int
    """Tokens (of those scanned) where it was active."""
    examples: list[Example]


@dataclass
class MaxactResult:
    jsae: str
    n_tokens: int
    latents: list[LatentExamples]
    tokens_per_second: float
    source: str = ""
    """Where the examples come from: a jacobian store's, or a scan (and why)."""

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"jsae": self.jsae, "n_tokens": self.n_tokens, "tokens_per_second": round(self.tokens_per_second, 1),
                "source": self.source, "latents": [asdict(item) for item in self.latents]}


def _value_of(code: Encoded, latent: int) -> torch.Tensor:
    """``[B]`` one latent's activation in a batch of codes (0 where it is not in the top k)."""
    return (code.values * (code.indices == latent)).sum(1)


def _context_windows(model: LoadedJSAE, rows: np.ndarray, context: int) -> list[tuple[int, int]]:
    """[lo, hi) around each row, within its own context."""
    T = model.acts.context_size
    starts = rows - model.acts.position(rows)
    return [(int(max(s, r - context)), int(min(s + T, r + context + 1))) for s, r in zip(starts, rows)]


@torch.no_grad()
def examples(model: LoadedJSAE, side: str, latent: int, rows: np.ndarray, scores: np.ndarray, context: int,
             extras: list[dict[str, float]] | None = None, input_latent: int | None = None) -> list[Example]:
    """The text around each of ``rows`` with ``latent``'s activation at every token (and, for a
    connection, ``input_latent``'s too)."""
    out = []
    for rank, ((lo, hi), r, score) in enumerate(zip(_context_windows(model, rows, context), rows, scores), 1):
        ids = model.acts.tokens(lo, hi)
        x, y = model.acts.xy(lo, hi, model.device)
        values = _value_of(model.jsae.encode(side, x, y), latent)
        inputs = None if input_latent is None else [round(float(v), 4) for v in _value_of(model.jsae.encode("in", x), input_latent)]
        out.append(Example(rank, float(score), int(r), model.acts.token_texts(ids), [round(float(v), 4) for v in values],
                           int(r) - lo, extras[rank - 1] if extras else {}, inputs))
    return out


def maxact(cfg: MaxactConfig, reporter: Reporter = SILENT) -> MaxactResult:
    from jsaectl.device import pick_device

    model = LoadedJSAE.open(cfg.jsae, acts=cfg.acts, device=pick_device(cfg.device), include_bos=cfg.include_bos)
    cfg.check_latents(model.n_latents)
    jac = model.jacobian
    why = _why_scan(jac, cfg)
    if why is None:
        result = _from_store(jac, cfg, model)
        result.source = f"{jac.url}, which keeps them (from the {jac.meta['n_tokens']:,} tokens it analysed)"
        return result
    n_tokens = min(cfg.tokens or model.acts.n_tokens, model.acts.n_tokens)
    began = time.perf_counter()
    if cfg.connection is not None:
        result = _scan_connection(cfg, model, n_tokens, reporter)
    else:
        result = _scan_latents(cfg, model, n_tokens, reporter)
    result.tokens_per_second = result.n_tokens / (time.perf_counter() - began)
    result.source = f"a scan of {result.n_tokens:,} tokens of {model.acts.url}" + (f" ({why})" if why else "")
    return result


def _why_scan(jac: st.Store | None, cfg: MaxactConfig) -> str | None:
    """Why the activations must be scanned ("" without a jacobian store), or None when the
    jacobian store ``jac`` holds the answer."""
    if jac is None:
        return ""
    meta, g = jac.meta, jac.group
    keep = int(g["latents/in_top_rows"].shape[1]) if "latents/in_top_rows" in g else 0
    if cfg.acts is not None and st.resolve_url(cfg.acts) != meta.get("acts_store"):
        return "--acts names other activations than the jacobian store analysed"
    if cfg.tokens is not None:
        return "--tokens asks for a scan"
    if bool(meta["config"].get("include_bos")) != cfg.include_bos:
        return "--include-bos differs from the jacobian store's"
    if cfg.examples > keep:
        return f"the jacobian store keeps {keep} examples per latent, --examples asks for {cfg.examples}"
    if cfg.connection is None:
        return None if not cfg.top_latents or f"latents/{cfg.side}_total" in g else \
            "the jacobian store predates the totals --top-latents ranks by"
    if cfg.rank_by != "jacobian":
        return "the jacobian store ranks a connection's tokens by |J|, not by --rank-by product"
    if _stored_pair(jac, cfg.connection) is None:
        held = int(g["examples/pair_input"].shape[0]) if "examples/pair_input" in g else 0
        return f"the jacobian store keeps examples for its {held:,} strongest connections, not for {cfg.connection[0]}:{cfg.connection[1]}"
    return None


def _stored_pair(jac: st.Store, connection: tuple[int, int]) -> int | None:
    """The index of a connection among those whose examples a jacobian store keeps."""
    if "examples/pair_input" not in jac.group:
        return None
    found = np.flatnonzero((jac.array("examples/pair_input")[...] == connection[0])
                           & (jac.array("examples/pair_output")[...] == connection[1]))
    return int(found[0]) if len(found) else None


def _from_store(jac: st.Store, cfg: MaxactConfig, model: LoadedJSAE) -> MaxactResult:
    """The answer from the examples a jacobian store holds (only the windows are read)."""
    n_tokens = int(jac.meta["n_tokens"])
    if cfg.connection is not None:
        p = _stored_pair(jac, cfg.connection)
        rows, scores = (jac.array(f"examples/pair_{name}")[p] for name in ("rows", "values"))
        valid = rows >= 0
        from jsaectl.connections import query

        found = query(jac, inputs=(cfg.connection[0],), outputs=(cfg.connection[1],), top=1)
        count = found[0].count if found else 0
        item = _connection_item(cfg, model, rows[valid][: cfg.examples], scores[valid][: cfg.examples], count)
        return MaxactResult(model.store.url, n_tokens, [item], 0.0)
    side = cfg.side
    latents = list(cfg.latents)
    if cfg.top_latents:
        latents = np.argsort(-jac.array(f"latents/{side}_total")[...], kind="stable")[: cfg.top_latents].tolist()
    rows, scores = jac.array(f"latents/{side}_top_rows"), jac.array(f"latents/{side}_top_values")
    labels, counts = jac.array(f"latents/{side}_label"), jac.array(f"latents/{side}_count")
    items = []
    for latent in latents:
        r, v = rows[latent], scores[latent]
        r, v = r[r >= 0][: cfg.examples], v[r >= 0][: cfg.examples]
        items.append(LatentExamples(int(latent), side, str(labels[latent]), int(counts[latent]),
                                    examples(model, side, int(latent), r, v, cfg.context)))
    return MaxactResult(model.store.url, n_tokens, items, 0.0)


def _scan_latents(cfg: MaxactConfig, model: LoadedJSAE, n_tokens: int, reporter: Reporter) -> MaxactResult:
    tracked = torch.tensor(cfg.latents, dtype=torch.int64) if cfg.latents else torch.arange(model.n_latents)
    slot = slots(tracked, model.n_latents)
    tops = TopExamples(len(tracked), cfg.examples)
    reporter.start("maxact", model.analysed_rows(n_tokens), "tokens")
    for rows, code in model.codes(cfg.side, n_tokens, cfg.batch_size):
        tops.update_codes(code.indices.cpu(), code.values.cpu(), rows.cpu(), slot)
        reporter.advance(len(rows))
    reporter.finish()
    order = range(len(tracked))
    if cfg.top_latents:
        order = torch.argsort(tops.total, descending=True)[: cfg.top_latents].tolist()
    from jsaectl.text import label

    items = []
    for s in order:
        rows, scores = tops.found(s)
        latent = int(tracked[s])
        found = examples(model, cfg.side, latent, rows, scores, cfg.context)
        ids = np.array([model.acts.tokens(int(r), int(r) + 1)[0] for r in rows], dtype=np.int64)
        items.append(LatentExamples(latent, cfg.side, label(ids, model.acts.vocab), int(tops.count[s]), found))
    return MaxactResult(model.store.url, model.analysed_rows(n_tokens), items, 0.0)


def _scan_connection(cfg: MaxactConfig, model: LoadedJSAE, n_tokens: int, reporter: Reporter) -> MaxactResult:
    """Tokens where input latent I and output latent O are both active (O in f_s's output code,
    the rows of J), ranked by |J[O, I]| or by the product of the two activations."""
    lat_in, lat_out = cfg.connection
    tops = TopExamples(1, cfg.examples)
    reporter.start("maxact", model.analysed_rows(n_tokens), "tokens")
    for rows_np, x, y in model.acts.batches(n_tokens, cfg.batch_size, model.include_bos, model.device):
        rows = torch.from_numpy(rows_np).to(model.device)
        codes = model.analyse(x, rows, y, jacobian="codes")
        a_in, a_out = _value_of(codes.code_in, lat_in), _value_of(codes.jac_out, lat_out)
        both = (a_in > 0) & (a_out > 0)
        if both.any():
            if cfg.rank_by == "jacobian":  # J only where the connection acts
                score = _entry(model.analyse(x[both], rows[both], y[both] if y is not None else None), lat_in, lat_out).abs()
            else:
                score = a_in[both] * a_out[both]
            tops.update(torch.zeros(int(both.sum()), dtype=torch.int64), score.cpu(), rows[both].cpu())
        reporter.advance(len(rows))
    reporter.finish()
    rows, scores = tops.found(0)
    return MaxactResult(model.store.url, model.analysed_rows(n_tokens), [_connection_item(cfg, model, rows, scores,
                                                                                          int(tops.count[0]))], 0.0)


def _connection_item(cfg: MaxactConfig, model: LoadedJSAE, rows: np.ndarray, scores: np.ndarray, count: int) -> LatentExamples:
    """A connection's examples at ``rows``, each with both activations and J there."""
    lat_in, lat_out = cfg.connection
    extras = []
    for r in rows:
        b = model.window(int(r), int(r) + 1, jacobian="value")
        extras.append({"in_activation": float(_value_of(b.code_in, lat_in)[0]), "out_activation": float(_value_of(b.jac_out, lat_out)[0]),
                       "J": float(_entry(b, lat_in, lat_out)[0])})
    found = examples(model, "out", lat_out, rows, scores, cfg.context, extras, input_latent=lat_in)
    return LatentExamples(f"{lat_in}→{lat_out}", "connection", f"input {lat_in} → output {lat_out}, ranked by {cfg.rank_by}",
                          count, found)


def _entry(batch: Batch, lat_in: int, lat_out: int) -> torch.Tensor:
    """``[B]`` J[lat_out, lat_in] of each token (0 where either latent is not active)."""
    rows = (batch.jac_out.indices == lat_out) & (batch.jac_out.values > 0)  # [B, k_out]
    cols = (batch.code_in.indices == lat_in) & (batch.code_in.values > 0)  # [B, k_in]
    return (batch.J * rows[:, :, None] * cols[:, None, :]).sum((1, 2))
