"""Max-activating examples: the contexts where a latent (or a connection) is strongest.

One streaming pass over the activations store encodes every token with the SAE pair and
keeps the top examples per tracked latent (``topk.TopExamples``: memory is latents ×
examples, never the store). Then the text around each example is rebuilt from the store's
tokens and vocab, with the latent's activation at every neighbouring token.

* ``latents``: examples of these latents of one SAE (``side`` "in" or "out");
* ``top_latents``: the N latents of ``side`` with the largest total activation;
* ``connection``: tokens where input latent I and output latent O are both active, ranked
  by |J[O, I]| at that token or by the product of the two activations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from jsaectl.errors import ConfigError
from jsaectl.jsae import slopes_at
from jsaectl.pair import LoadedJSAE
from jsaectl.progress import SILENT, Reporter
from jsaectl.topk import TopExamples

SIDES = ("in", "out")
RANK_BY = ("jacobian", "product")


@dataclass
class MaxactConfig:
    jsae: str = ""
    """JSAE store written by train."""
    side: str = "in"
    """Which SAE the latents belong to: in (MLP input) or out (MLP output)."""
    latents: tuple[int, ...] = ()
    """Latent ids to show."""
    connection: tuple[int, int] | None = None
    """(input latent, output latent) to show where both fire."""
    top_latents: int = 0
    """Show the N latents with the largest total activation."""
    rank_by: str = "jacobian"
    """Connection examples ranked by |J| or by the product of the activations."""
    examples: int = 10
    """Examples per latent."""
    context: int = 8
    """Tokens shown on each side of an example (within its context)."""
    tokens: int | None = None
    """Tokens to scan (the first N of the store). None: all."""
    acts: str | None = None
    """Scan this activations store instead of the JSAE's own."""
    include_bos: bool = False
    """Consider the BOS token at the start of each context too (skipped by default)."""
    batch_size: int = 4096
    device: str = "auto"

    def validate(self, n_latents: int) -> None:
        from dataclasses import asdict

        from jsaectl.store import check_options_finite

        check_options_finite(asdict(self))
        modes = bool(self.latents) + (self.connection is not None) + (self.top_latents > 0)
        if modes != 1:
            raise ConfigError("give exactly one of --latent, --connection or --top-latents",
                              hint="e.g. --side out --latent 123, --connection 45:123, or --top-latents 5")
        if self.side not in SIDES:
            raise ConfigError(f"--side must be in or out, not {self.side!r}")
        if self.rank_by not in RANK_BY:
            raise ConfigError(f"--rank-by must be jacobian or product, not {self.rank_by!r}")
        ids = list(self.latents) + (list(self.connection) if self.connection else [])
        bad = [i for i in ids if not 0 <= i < n_latents]
        if bad:
            raise ConfigError(f"latent id {bad[0]} is out of range: the SAEs have {n_latents} latents (0–{n_latents - 1})")
        if self.examples <= 0 or self.context < 0 or self.batch_size <= 0 or (self.tokens is not None and self.tokens <= 0):
            raise ConfigError("--examples, --batch-size and --tokens must be positive, --context >= 0")
        if self.top_latents > n_latents:
            raise ConfigError(f"--top-latents {self.top_latents} is more than the {n_latents} latents")


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

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"jsae": self.jsae, "n_tokens": self.n_tokens, "tokens_per_second": round(self.tokens_per_second, 1),
                "latents": [asdict(item) for item in self.latents]}


def _latent_values(model: LoadedJSAE, side: str, x: torch.Tensor, latent: int) -> torch.Tensor:
    """One latent's activation at each row of ``x`` (0 when it is not in the top k)."""
    sae = model.sae(side)
    code = sae.encode(model.mlp.forward(x) if side == "out" else x)
    return (code.values * (code.indices == latent)).sum(1)


def _context_windows(model: LoadedJSAE, rows: np.ndarray, context: int) -> list[tuple[int, int]]:
    """[lo, hi) around each row, within its own context."""
    T = model.acts.context_size
    starts = rows - model.acts.position(rows)
    return [(int(max(s, r - context)), int(min(s + T, r + context + 1))) for s, r in zip(starts, rows)]


@torch.no_grad()
def _examples(model: LoadedJSAE, side: str, latent: int, rows: np.ndarray, scores: np.ndarray, context: int,
              extras: list[dict[str, float]] | None = None) -> list[Example]:
    out = []
    for rank, ((lo, hi), r, score) in enumerate(zip(_context_windows(model, rows, context), rows, scores), 1):
        ids = model.acts.tokens(lo, hi)
        values = _latent_values(model, side, model.acts.rows("x", lo, hi).to(model.device), latent)
        out.append(Example(rank, float(score), int(r), model.acts.token_texts(ids), [round(float(v), 4) for v in values],
                           int(r) - lo, extras[rank - 1] if extras else {}))
    return out


def maxact(cfg: MaxactConfig, reporter: Reporter = SILENT) -> MaxactResult:
    from jsaectl.models import pick_device

    model = LoadedJSAE.open(cfg.jsae, acts=cfg.acts, device=pick_device(cfg.device), include_bos=cfg.include_bos)
    cfg.validate(model.n_latents)
    n_tokens = min(cfg.tokens or model.acts.n_tokens, model.acts.n_tokens)
    began = time.perf_counter()
    if cfg.connection is not None:
        result = _scan_connection(cfg, model, n_tokens, reporter)
    else:
        result = _scan_latents(cfg, model, n_tokens, reporter)
    result.tokens_per_second = result.n_tokens / (time.perf_counter() - began)
    return result


def _scan_latents(cfg: MaxactConfig, model: LoadedJSAE, n_tokens: int, reporter: Reporter) -> MaxactResult:
    tracked = torch.tensor(cfg.latents, dtype=torch.int64) if cfg.latents else torch.arange(model.n_latents)
    slot = torch.full((model.n_latents,), -1, dtype=torch.int64)
    slot[tracked] = torch.arange(len(tracked))
    tops = TopExamples(len(tracked), cfg.examples)
    reporter.start("maxact", model.analysed_rows(n_tokens), "tokens")
    for rows, code in model.codes(cfg.side, n_tokens, cfg.batch_size):
        idx, val = code.indices.cpu(), code.values.cpu()
        where = (val > 0) & (slot[idx] >= 0)
        tops.update(slot[idx[where]], val[where], rows.cpu()[:, None].expand_as(idx)[where])
        reporter.advance(len(rows))
    reporter.finish()
    order = range(len(tracked))
    if cfg.top_latents:
        order = torch.argsort(tops.total, descending=True)[: cfg.top_latents].tolist()
    from jsaectl.pair import label

    items = []
    for s in order:
        valid = tops.rows[s] >= 0
        rows, scores = tops.rows[s][valid].numpy(), tops.values[s][valid].numpy()
        latent = int(tracked[s])
        examples = _examples(model, cfg.side, latent, rows, scores, cfg.context)
        ids = np.array([model.acts.tokens(int(r), int(r) + 1)[0] for r in rows], dtype=np.int64)
        items.append(LatentExamples(latent, cfg.side, label(ids, model.acts.vocab), int(tops.count[s]), examples))
    return MaxactResult(model.store.url, model.analysed_rows(n_tokens), items, 0.0)


def _scan_connection(cfg: MaxactConfig, model: LoadedJSAE, n_tokens: int, reporter: Reporter) -> MaxactResult:
    lat_in, lat_out = cfg.connection
    tops = TopExamples(1, cfg.examples)
    # Only one entry of each token's Jacobian is needed: J[o, i] = Σ_h U_T[o, h] · s_h · V[i, h].
    U_row = model.sae_out.W_enc[:, lat_out] @ model.mlp.W_out  # [m]
    V_rows = [model.sae_in.W_dec[lat_in] @ W.t() for W in ([model.mlp.W_in] + ([model.mlp.W_gate] if model.mlp.gated else []))]
    reporter.start("maxact", model.analysed_rows(n_tokens), "tokens")
    for batch in model.batches(n_tokens, cfg.batch_size, with_jacobian=False):
        a_in = (batch.code_in.values * (batch.code_in.indices == lat_in)).sum(1)
        a_out = (batch.code_out.values * (batch.code_out.indices == lat_out)).sum(1)
        both = (a_in > 0) & (a_out > 0)
        if both.any():
            x_eval = batch.x[both] if model.jacobian_at == "x" else model.sae_in.decode(batch.code_in.values[both], batch.code_in.indices[both])
            J = sum((s * (U_row * V)).sum(1) for s, V in zip(slopes_at(model.mlp, x_eval), V_rows))
            score = J.abs() if cfg.rank_by == "jacobian" else a_in[both] * a_out[both]
            tops.update(torch.zeros(int(both.sum()), dtype=torch.int64), score.cpu(), batch.rows[both].cpu())
        reporter.advance(len(batch.rows))
    reporter.finish()
    valid = tops.rows[0] >= 0
    rows, scores = tops.rows[0][valid].numpy(), tops.values[0][valid].numpy()
    extras = []
    for r in rows:
        b = model.analyse(model.acts.rows("x", int(r), int(r) + 1).to(model.device), torch.tensor([int(r)]))
        i = (b.code_in.indices[0] == lat_in).nonzero()
        o = (b.code_out.indices[0] == lat_out).nonzero()
        extras.append({"in_activation": float(b.code_in.values[0, i]), "out_activation": float(b.code_out.values[0, o]),
                       "J": float(b.J[0, o, i])})
    examples = _examples(model, "out", lat_out, rows, scores, cfg.context, extras)
    item = LatentExamples(f"{lat_in}->{lat_out}", "connection", f"input {lat_in} → output {lat_out}, ranked by {cfg.rank_by}",
                          int(tops.count[0]), examples)
    return MaxactResult(model.store.url, model.analysed_rows(n_tokens), [item], 0.0)
