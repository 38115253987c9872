"""`jsaectl contrast`: which latents tell two kinds of text apart, and what computes them.

Each side's text (a SOURCE: whatever ``harvest --dataset`` accepts, or ``SOURCE:key=value`` to
keep the documents with those labels, e.g. ``jsaectl-sample:lang=de``) is cut into contexts
as harvest cuts it and run through the model to layer L's MLP input and through both SAEs.
For every latent of each SAE: its firing rate (the share of tokens where it is active) and its
mean activation where active, on A and on B.

Ranking: the log odds ratio of firing on A rather than on B, with 0.5 added to each count
(Haldane–Anscombe), ranked by the lower end of its 95% interval, ``log OR − 1.96·SE`` with
``SE = √(1/a + 1/b + 1/c + 1/d)``: a latent seen on three tokens has a wide interval and does not
come first; one that fires on 9% of A and 0.4% of B does. (Tokens of one text are not
independent, so the interval is narrower than it should be; it ranks, it does not test.)

For the top output latents, the input latents that compute them: the jacobian store's
connections into each (when JSAE is a jacobian store), or measured on A's tokens: Σ|J| of
each (input, output) pair over them, divided by their number (a connection's strength).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch

from jsaectl.configs import ContrastConfig
from jsaectl.connections import query
from jsaectl.data import describe_source, iter_contexts, open_source
from jsaectl.errors import DataError
from jsaectl.jacobian import labels_for, pair_stats, reduce_pairs
from jsaectl.jsae import active_pairs
from jsaectl.progress import SILENT, Reporter
from jsaectl.trained import LoadedJSAE

Z95 = 1.96


@dataclass
class LatentContrast:
    latent: int
    label: str
    count_a: int
    count_b: int
    rate_a: float
    rate_b: float
    mean_a: float
    """Mean activation on A's tokens where it is active (0 when never)."""
    mean_b: float
    log_odds: float
    """log of (odds of firing on A) / (odds on B), counts + 0.5."""
    lower: float
    """log_odds − 1.96·SE: the ranking statistic."""
    computed_by: list[dict[str, Any]] = field(default_factory=list)
    """For output latents: the input latents that compute it, strongest first."""


@dataclass
class ContrastResult:
    jsae: str
    a: dict[str, Any]
    b: dict[str, Any]
    inputs: list[LatentContrast]
    outputs: list[LatentContrast]
    computed_by: str
    statistic: str = "95% lower bound of the log odds ratio of firing on A rather than on B (counts + 0.5)"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Side:
    source: str
    tokens: int = 0
    count: dict[str, torch.Tensor] = field(default_factory=dict)  # side -> [n] times active
    total: dict[str, torch.Tensor] = field(default_factory=dict)  # side -> [n] summed activation
    x: list[torch.Tensor] = field(default_factory=list)  # A's MLP inputs, kept to measure J


def contrast(cfg: ContrastConfig, reporter: Reporter = SILENT) -> ContrastResult:
    from jsaectl.device import pick_device

    model = LoadedJSAE.open(cfg.jsae, device=pick_device(cfg.device), include_bos=cfg.include_bos)
    jac = model.jacobian
    lm = model.acts.model(model.device)
    sides = [_count(model, lm, source, cfg, keep_x=jac is None and name == "a", reporter=reporter)
             for name, source in (("a", cfg.a), ("b", cfg.b))]
    ranked = {side: _rank(sides[0], sides[1], side, cfg.top) for side in ("in", "out")}
    if jac is not None:
        where = f"the connections of {jac.url}"
        for o in ranked["out"]:
            o.computed_by = [{"input": c.input, "label": c.input_label, "strength": c.strength, "mean_J": c.mean,
                              "tokens": c.count} for c in query(jac, outputs=(o.latent,), top=cfg.inputs)]
    else:
        where = f"Σ|J| over A's {sides[0].tokens:,} tokens"
        _measure(model, sides[0], ranked["out"], cfg)
    _label(model, ranked, cfg, reporter)
    info = [{"source": s.source, "described": describe_source(s.source), "tokens": s.tokens} for s in sides]
    return ContrastResult(model.store.url, info[0], info[1], ranked["in"], ranked["out"], where)


@torch.no_grad()
def _count(model: LoadedJSAE, lm: Any, source: str, cfg: ContrastConfig, keep_x: bool, reporter: Reporter) -> _Side:
    """Every latent's active count and summed activation over the first ``cfg.tokens`` tokens of ``source``."""
    T, skip = model.acts.context_size, model.acts.skips_bos(cfg.include_bos)
    pieces = open_source(source, text_column=cfg.text_column)
    contexts = list(islice(iter_contexts(pieces, lm.tokenizer, T, bos=model.acts.bos, keep_last=True), -(-cfg.tokens // T)))
    side = _Side(source, count={s: torch.zeros(model.n_latents, dtype=torch.int64) for s in ("in", "out")},
                 total={s: torch.zeros(model.n_latents, dtype=torch.float64) for s in ("in", "out")})
    reporter.start(f"contrast {describe_source(source)}", sum(len(c) for c in contexts), "tokens")
    # Batches of whole contexts; the last, shorter one alone.
    groups = [contexts[i : i + cfg.batch_size] for i in range(0, len(contexts), cfg.batch_size)]
    groups = [[c for c in g if len(c) == T] for g in groups] + [[c] for c in contexts if len(c) < T]
    for group in filter(None, groups):
        x = lm.forward(torch.from_numpy(np.stack(group).astype(np.int64))).float()  # [B, T', d]
        x = (x[:, 1:] if skip else x).reshape(-1, x.shape[-1]).to(model.device)
        if len(x) == 0:
            continue
        out = model.jsae(x, None, jacobian="off")
        for s, code in (("in", out.code_in), ("out", out.code_out)):
            on = code.values > 0
            side.count[s] += torch.bincount(code.indices[on].cpu(), minlength=model.n_latents)
            side.total[s] += torch.bincount(code.indices[on].cpu(), weights=code.values[on].double().cpu(),
                                            minlength=model.n_latents)
        side.tokens += len(x)
        if keep_x:
            side.x.append(x)
        reporter.advance(sum(len(c) for c in group))
    reporter.finish()
    if side.tokens == 0:
        raise DataError(f"{describe_source(source)} holds no token the JSAE reads", hint="give more text")
    return side


def _rank(a: _Side, b: _Side, side: str, top: int) -> list[LatentContrast]:
    ca, cb = a.count[side].double(), b.count[side].double()
    pa, pb = ca + 0.5, cb + 0.5
    qa, qb = a.tokens - ca + 0.5, b.tokens - cb + 0.5
    log_odds = torch.log(pa * qb / (qa * pb))
    lower = log_odds - Z95 * torch.sqrt(1 / pa + 1 / qa + 1 / pb + 1 / qb)
    order = torch.argsort(lower, descending=True)[:top]
    mean = lambda s, i: float(s.total[side][i] / s.count[side][i]) if s.count[side][i] else 0.0  # noqa: E731
    return [LatentContrast(int(i), "", int(ca[i]), int(cb[i]), float(ca[i] / a.tokens), float(cb[i] / b.tokens), mean(a, i),
                           mean(b, i), round(float(log_odds[i]), 4), round(float(lower[i]), 4)) for i in order.tolist()]


@torch.no_grad()
def _measure(model: LoadedJSAE, a: _Side, outputs: list[LatentContrast], cfg: ContrastConfig) -> None:
    """The input latents computing each top output latent, measured on A's tokens: Σ|J|, Σ J and
    the count of each (output, input) pair where both are active."""
    n = model.n_latents
    wanted = torch.tensor([o.latent for o in outputs], device=model.device)
    keys, stats = [], []
    for x in a.x:  # only the entries into the wanted output latents: not the k × k of every token
        out = model.jsae(x, None, jacobian="codes")
        both, key = active_pairs(out.code_in, out.jac_out, n)  # [B, k_out, k_in] each
        both &= torch.isin(out.jac_out.indices, wanted)[:, :, None]
        token, o_slot, i_slot = torch.nonzero(both, as_tuple=True)
        keys.append(key[both].cpu())
        stats.append(pair_stats(model.jsae.entries(x, out, token, i_slot, o_slot)))
    uniq, _, summed = reduce_pairs(torch.cat(keys), torch.cat(stats))
    counts, sums, signed = summed[:, 0], summed[:, 1], summed[:, 2]
    for o in outputs:
        mine = torch.nonzero(uniq % n == o.latent).squeeze(1)
        mine = mine[torch.argsort(sums[mine], descending=True)][: cfg.inputs]
        o.computed_by = [{"input": int(uniq[u] // n), "label": "", "strength": float(sums[u]) / a.tokens,
                          "mean_J": float(signed[u] / counts[u]), "tokens": int(counts[u])} for u in mine.tolist()]


def _label(model: LoadedJSAE, ranked: dict[str, list[LatentContrast]], cfg: ContrastConfig, reporter: Reporter) -> None:
    shown = {"in": sorted({x.latent for x in ranked["in"]} | {c["input"] for o in ranked["out"] for c in o.computed_by}),
             "out": sorted({x.latent for x in ranked["out"]})}
    labels, _ = labels_for(model, shown, cfg.label_tokens, cfg.batch_size * model.acts.context_size, reporter)
    for side, items in ranked.items():
        for x in items:
            x.label = labels.get((side, x.latent), "")
    for o in ranked["out"]:
        for c in o.computed_by:
            c["label"] = labels.get(("in", c["input"]), c["label"])
