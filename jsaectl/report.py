"""`jsaectl report`: a static HTML report of a jacobian store, to open from disk.

One pass over the analysed activations finds, for the strongest connections of the store
and for every latent they join, the contexts where each acts most (as ``maxact`` and
``maxact --connection`` rank them). The pages are rendered with Jinja2 (autoescaped: tokens
are untrusted text) from templates shipped in the package, with one stylesheet and one
script and nothing fetched from the network:

* ``index.html``: the run (model, layer, training config and curves), the sparsity table, the
  |J| histogram, reconstruction figures, the connection graph (input latents left, output
  latents right, edge width = strength, colour = sign of mean J; hover or click a latent to
  highlight its edges) and the connections table with a filter box;
* ``latents/in-I.html``, ``latents/out-O.html``: a latent's label, its max-activating contexts
  with every token shaded by its activation, and its strongest connections;
* ``connections/I-O.html``: the contexts where the connection acts, ranked by |J|, with both
  latents' activations shown.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch

from jsaectl import connections as conn
from jsaectl import store as st
from jsaectl import tracking
from jsaectl.configs import ReportConfig
from jsaectl.errors import StoreError
from jsaectl.jsae import active_pairs
from jsaectl.maxact import Example, examples
from jsaectl.progress import SILENT, Reporter
from jsaectl.topk import TopExamples, slots
from jsaectl.train import lam_schedule
from jsaectl.trained import LoadedJSAE

ASSETS = ("report.css", "report.js")
MARKER = ".jsaectl-report"  # in every report folder: --overwrite replaces only a report


@dataclass
class ReportResult:
    out: str
    files: list[str] = field(default_factory=list)
    connections: int = 0
    latents: int = 0

    def summary(self) -> dict[str, Any]:
        return {"out": self.out, "index": os.path.join(self.out, "index.html"), "files": len(self.files),
                "connections": self.connections, "latents": self.latents}


@dataclass
class _Scan:
    inputs: list[int]
    outputs: list[int]
    pairs: list[tuple[int, int]]
    tops: dict[str, TopExamples]


@dataclass(frozen=True)
class _Written:
    """The pages a report writes. Tables list more latents and connections than get pages (a
    latent's strongest connections reach beyond the top ones): the templates link only to these."""
    latents: frozenset[tuple[str, int]]
    connections: frozenset[tuple[int, int]]

    def latent(self, side: str, latent: int) -> bool:
        return (side, latent) in self.latents

    def connection(self, input: int, output: int) -> bool:
        return (input, output) in self.connections


def report(cfg: ReportConfig, reporter: Reporter = SILENT) -> ReportResult:
    from jsaectl.device import pick_device

    jac = st.open_store(cfg.store, "jacobian")
    out = _check_out(cfg.out, cfg.overwrite, [jac.url])
    model = LoadedJSAE.open(jac.url, device=pick_device(cfg.device))
    top = conn.query(jac, top=cfg.connections)
    scan = _scan(model, top, cfg, reporter)
    pages = _pages(jac, model, top, scan, cfg, reporter)
    files = _render(out, pages)
    return ReportResult(out, files, len(top), len(scan.inputs) + len(scan.outputs))


def _check_out(out: str, overwrite: bool, reads: list[str]) -> str:
    """--out: never a store the report reads or follows (the jacobian store, its JSAE and their
    activations), and replaced only when it holds a report."""
    url = st.check_output_dir(out, reads)
    if os.path.isdir(url) and os.listdir(url):
        if not os.path.exists(os.path.join(url, MARKER)):
            raise StoreError(f"{url} is not empty and holds no jsaectl report; refusing to write into it", hint="choose another --out")
        if not overwrite:
            raise StoreError(f"{url} already holds a report", hint="pass --overwrite to replace it, or choose another --out")
    return url


# ---------------------------------------------------------------------------------------------
# One pass: the top examples of every latent and connection shown


@torch.no_grad()
def _scan(model: LoadedJSAE, top: list[conn.Connection], cfg: ReportConfig, reporter: Reporter) -> _Scan:
    n = model.n_latents
    inputs, outputs = sorted({c.input for c in top}), sorted({c.output for c in top})
    pairs = sorted({(c.input, c.output) for c in top})
    slot = {"in": slots(inputs, n), "out": slots(outputs, n)}
    keys = torch.tensor([i * n + o for i, o in pairs], dtype=torch.int64)
    tops = {"in": TopExamples(len(inputs), cfg.examples), "out": TopExamples(len(outputs), cfg.examples),
            "pair": TopExamples(len(pairs), cfg.examples)}
    reporter.start("report", model.analysed_rows(cfg.tokens), "tokens")
    for batch in model.batches(cfg.tokens, cfg.batch_size):
        rows = batch.rows.cpu()
        for side, code in (("in", batch.code_in), ("out", batch.code_out)):
            tops[side].update_codes(code.indices.cpu(), code.values.cpu(), rows, slot[side])
        both, pair_keys = (t.cpu() for t in active_pairs(batch.code_in, batch.jac_out, n))
        pair_keys = pair_keys[both]
        pos = torch.searchsorted(keys, pair_keys).clamp(max=len(keys) - 1)
        hit = keys[pos] == pair_keys
        tops["pair"].update(pos[hit], batch.J.abs().cpu()[both][hit], rows[:, None, None].expand_as(both)[both][hit])
        reporter.advance(len(batch.rows))
    reporter.finish()
    return _Scan(inputs, outputs, pairs, tops)


# ---------------------------------------------------------------------------------------------
# What the pages show


def _tokens(example: Example) -> list[dict[str, Any]]:
    """Each shown token: its text (whitespace made visible), activation(s) and shade."""
    peak = max(example.activations + [1e-12])
    peak_in = max((example.inputs or []) + [1e-12])
    out = []
    for i, (text, value) in enumerate(zip(example.tokens, example.activations)):
        inp = example.inputs[i] if example.inputs else None
        out.append({"text": text.replace("\n", "⏎"), "value": value, "shade": round(min(1.0, max(0.0, value / peak)), 3),
                    "input": inp, "input_shade": None if inp is None else round(min(1.0, max(0.0, inp / peak_in)), 3),
                    "focus": i == example.focus})
    return out


def _example_rows(found: list[Example]) -> list[dict[str, Any]]:
    return [{"rank": e.rank, "score": e.activation, "row": e.row, "tokens": _tokens(e), "extra": e.extra} for e in found]


def _pages(jac: st.Store, model: LoadedJSAE, top: list[conn.Connection], scan: _Scan, cfg: ReportConfig,
           reporter: Reporter) -> dict[str, Any]:
    labels = {side: jac.array(f"latents/{side}_label")[...] for side in ("in", "out")}
    counts = {side: jac.array(f"latents/{side}_count")[...] for side in ("in", "out")}
    reporter.note(f"report: {len(top)} connections, {len(scan.inputs)} input and {len(scan.outputs)} output latents")
    latents = []
    for side, ids in (("in", scan.inputs), ("out", scan.outputs)):
        for slot, latent in enumerate(ids):
            rows, scores = scan.tops[side].found(slot)
            strongest = conn.query(jac, inputs=(latent,) if side == "in" else (), outputs=(latent,) if side == "out" else (),
                                   top=12)
            latents.append({"side": side, "id": latent, "label": str(labels[side][latent]), "count": int(counts[side][latent]),
                            "examples": _example_rows(examples(model, side, latent, rows, scores, cfg.context)),
                            "connections": strongest})
    pairs = []
    for slot, (i, o) in enumerate(scan.pairs):
        rows, scores = scan.tops["pair"].found(slot)
        c = next(c for c in top if (c.input, c.output) == (i, o))
        pairs.append({"connection": c, "examples": _example_rows(examples(model, "out", o, rows, scores, cfg.context,
                                                                        input_latent=i))})
    written = _Written(frozenset((lat["side"], lat["id"]) for lat in latents), frozenset(scan.pairs))
    return {"summary": _summary(jac, model), "top": top, "graph": _graph(top), "latents": latents, "pairs": pairs,
            "histogram": _histogram(jac), "curves": _curves(model.store), "scanned": model.analysed_rows(cfg.tokens),
            "written": written}


def _summary(jac: st.Store, model: LoadedJSAE) -> dict[str, Any]:
    meta, jmeta = jac.meta, model.store.meta
    prov = jmeta.get("model") or {}
    cfg = jmeta.get("config") or {}
    return {"model": prov.get("name"), "random_init": prov.get("random_init"), "layer": jmeta.get("layer"),
            "k": meta["k"], "n_latents": meta["n_latents"], "lam": jmeta.get("lam"), "jacobian_at": meta.get("jacobian_at", "x"),
            "n_tokens": meta["n_tokens"], "steps": jmeta.get("n_steps"), "train_tokens": cfg.get("tokens"),
            "batch_size": cfg.get("batch_size"), "lr": cfg.get("lr"), "final": jmeta.get("final_metrics") or {},
            "sparsity": meta["sparsity"], "linearity": meta.get("linearity"), "jsae_store": model.store.url,
            "acts_store": meta.get("acts_store"), "store": jac.url, "distinct_pairs": meta.get("distinct_pairs"),
            "stored_pairs": meta.get("stored_pairs"),
            "wandb": tracking.describe_run(jmeta["wandb"]) if jmeta.get("wandb") else None}


# ---------------------------------------------------------------------------------------------
# Charts: coordinates computed here, drawn as SVG by the templates


def _graph(top: list[conn.Connection], height_per_node: int = 26) -> dict[str, Any]:
    """Input latents on the left, output latents on the right, each side ordered by its total
    strength; an edge's width grows with the connection's strength."""
    def order(side: str) -> list[int]:
        totals: dict[int, float] = {}
        for c in top:
            key = c.input if side == "in" else c.output
            totals[key] = totals.get(key, 0.0) + c.strength
        return sorted(totals, key=lambda k: -totals[k])

    ins, outs = order("in"), order("out")
    height = max(len(ins), len(outs), 1) * height_per_node + 40
    y = {("in", latent): 30 + i * (height - 60) / max(1, len(ins) - 1) for i, latent in enumerate(ins)}
    y |= {("out", latent): 30 + i * (height - 60) / max(1, len(outs) - 1) for i, latent in enumerate(outs)}
    peak = max((c.strength for c in top), default=1.0) or 1.0
    labels = {("in", c.input): c.input_label for c in top} | {("out", c.output): c.output_label for c in top}
    nodes = [{"side": side, "id": latent, "y": round(y[(side, latent)], 1), "label": labels[(side, latent)]}
             for side, ids in (("in", ins), ("out", outs)) for latent in ids]
    edges = [{"input": c.input, "output": c.output, "y1": round(y[("in", c.input)], 1), "y2": round(y[("out", c.output)], 1),
              "width": round(0.6 + 7 * math.sqrt(c.strength / peak), 2), "sign": "pos" if c.mean >= 0 else "neg",
              "strength": c.strength, "mean": c.mean} for c in sorted(top, key=lambda c: c.strength)]
    return {"width": 900, "height": height, "nodes": nodes, "edges": edges}


def _histogram(jac: st.Store) -> dict[str, Any]:
    edges, counts = jac.array("histogram/edges")[...], jac.array("histogram/counts")[...]
    total = max(1, int(counts.sum()))
    shown = np.flatnonzero(counts >= 0.001 * total)
    if len(shown) == 0:
        return {"bars": [], "width": 0, "height": 0}
    bars = []
    peak = counts.max()
    for j, i in enumerate(range(shown[0], shown[-1] + 1)):
        lo = "0" if i == 0 else f"{edges[i - 1]:.0e}"
        hi = "∞" if i >= len(edges) else f"{edges[i]:.0e}"
        h = 160 * counts[i] / peak
        bars.append({"x": 50 + j * 34, "y": round(180 - h, 1), "h": round(h, 1), "label": f"{lo}–{hi}",
                     "share": f"{counts[i] / total:.1%}", "tick": f"{edges[i - 1]:.0e}" if 0 < i <= len(edges) and j % 2 == 0 else ""})
    return {"bars": bars, "width": 60 + 34 * len(bars), "height": 230}


ZERO_BASED = ("lam", "j_count")  # never negative, and 0 is the point: λ ramps up from it, |J| sparsity aims at it


def _curves(jsae: st.Store) -> list[dict[str, Any]]:
    """Training curves from the jsae store's history/, one small chart each."""
    if "history" not in jsae.group or "step" not in jsae.group["history"]:
        return []
    hist = jsae.group["history"]
    steps = hist["step"][...]
    charts = []
    for key, title in (("loss", "loss"), ("fvu_in", "FVU, input SAE"), ("fvu_out", "FVU, output SAE"),
                       ("j_count", "|J| > 0.01 per token"), ("lam", "λ")):
        if key not in hist or len(steps) < 2:
            continue
        ys = hist[key][...]
        ok = np.isfinite(ys)
        if ok.sum() < 2:
            continue
        xs, ys, note = steps[ok], ys[ok], ""
        if key == "lam":
            xs, ys, note = _lam_start(jsae.meta, xs, ys)
        charts.append(_chart(title, xs, ys, zero=key in ZERO_BASED, note=note))
    return charts


def _chart(title: str, xs: np.ndarray, ys: np.ndarray, zero: bool, note: str = "") -> dict[str, Any]:
    """One curve's polyline: x from step 0 (the axis says so) to the last logged step, y from the
    lowest value, or from 0 where ``zero``, to the highest."""
    lo, hi = float(ys.min()), float(ys.max())
    if zero:
        lo = min(0.0, lo)
    span = hi - lo or 1.0
    last = max(1.0, float(xs[-1]))
    points = " ".join(f"{40 + 240 * x / last:.1f},{20 + 110 * (1 - (v - lo) / span):.1f}" for x, v in zip(xs, ys))
    return {"title": title, "points": points, "lo": f"{lo:.3g}", "hi": f"{hi:.3g}", "last": int(xs[-1]), "note": note}


def _lam_start(meta: dict[str, Any], xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The record of step s (steps done) holds the λ that step used, λ·min(1, (s − 1)/warm), so
    step 1 used 0. While the first record is still on that linear ramp, the line from (1, 0) to it
    is the schedule itself and is drawn; past the ramp a straight line would misdraw it: say so."""
    warm = float((meta.get("config") or {}).get("lam_warmup") or 0) * float(meta.get("n_steps") or 0)
    lam = meta.get("lam")
    if warm <= 0 or lam is None or xs[0] <= 1:
        return xs, ys, ""
    if not np.isclose(ys[0], lam_schedule(lam, warm, xs[0] - 1)):  # a history that does not follow the schedule
        return xs, ys, ""
    if xs[0] - 1 <= warm:
        return np.r_[1.0, xs], np.r_[0.0, ys], ""
    return xs, ys, f"λ ramped up from 0 over the first {warm:.3g} steps, before the first logged step ({int(xs[0])})."


# ---------------------------------------------------------------------------------------------
# Writing


def _render(out: str, pages: dict[str, Any]) -> list[str]:
    """Render every page into a hidden folder beside ``out`` and move it into place at the end."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    templates = resources.files("jsaectl") / "assets" / "report"
    env = Environment(loader=FileSystemLoader(str(templates)), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["g"] = lambda v, digits=3: "–" if v is None else f"{v:.{digits}g}"
    env.globals["written"] = pages["written"]  # a global: the imported macros that make links see it too
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", suffix=".partial", dir=parent)
    try:
        for sub in ("latents", "connections"):
            os.mkdir(os.path.join(tmp, sub))
        for name in ASSETS:
            shutil.copyfile(str(templates / name), os.path.join(tmp, name))
        with open(os.path.join(tmp, MARKER), "w") as f:
            f.write("a report written by jsaectl report; --overwrite may replace this folder\n")
        _page(env, "index.html", os.path.join(tmp, "index.html"), root=".", **pages)
        for latent in pages["latents"]:
            _page(env, "latent.html", os.path.join(tmp, "latents", f"{latent['side']}-{latent['id']}.html"), root="..",
                  latent=latent, summary=pages["summary"])
        for pair in pages["pairs"]:
            c = pair["connection"]
            _page(env, "connection.html", os.path.join(tmp, "connections", f"{c.input}-{c.output}.html"), root="..",
                  pair=pair, summary=pages["summary"])
        files = sorted(os.path.join(out, os.path.relpath(os.path.join(d, f), tmp)) for d, _, fs in os.walk(tmp) for f in fs)
        os.chmod(tmp, 0o755)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def _page(env: Any, template: str, path: str, **context: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(env.get_template(template).render(**context))
