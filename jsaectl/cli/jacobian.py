"""Which input latents compute which output latents: the Jacobian between a JSAE's latents
over real tokens.

JSAE is the store printed by `jsaectl train` (or read from stdin). Writes a jacobian store
(sparsity summary, connections strongest first, |J| histogram, latent labels) and prints
its URL; shows the top connections, labelled by each latent's top-activating tokens, and a
histogram of |J| on stderr.
"""

from __future__ import annotations

import numpy as np
from rich.table import Table
from rich.text import Text

from jsaectl.cli._common import ConfigOpt, JsonOpt, RichReporter, emit, err
from jsaectl.cli._generate import from_config
from jsaectl.configs import JacobianConfig


def sparsity_table(result) -> Table:
    k2 = result.k**2
    sp = result.sparsity
    table = Table(title=f"Jacobian sparsity over {result.n_tokens:,} tokens (k = {result.k}: {k2} entries per token; "
                  f"J at {result.details.get('jacobian_at', 'x')})", title_justify="left")
    table.add_column("per token", justify="right")
    table.add_column("entries", justify="right")
    table.add_column("of k²", justify="right")
    for threshold, row in sp["above"].items():
        table.add_row(f"|J| > {threshold}", f"{row['mean_count']:.1f}", f"{row['fraction']:.1%}")
    table.add_section()  # scale-free: unchanged when all of J just shrinks
    for multiple, row in sp["above_rms"].items():
        table.add_row(f"|J| > {multiple} × rms", f"{row['mean_count']:.1f}", f"{row['fraction']:.1%}")
    table.add_row("90% of Σ|J| in", f"{sp['mass90']['mean_count']:.1f}", f"{sp['mass90']['fraction']:.1%}")
    table.add_row("Gini of |J|", f"{sp['gini']:.3f}", "")
    table.add_row("mean |J|", f"{sp['mean_abs']:.3g}", "")
    return table


def connections_table(connections, title: str) -> Table:
    """The connections as a table; labels are token text, shown as they are (never as markup)."""
    table = Table(title=title, title_justify="left")
    for name, justify in (("#", "right"), ("input latent", "left"), ("", "center"), ("output latent", "left"),
                          ("strength", "right"), ("mean |J|", "right"), ("mean J", "right"), ("tokens", "right")):
        table.add_column(name, justify=justify, overflow="fold")
    for rank, c in enumerate(connections, 1):
        table.add_row(str(rank), Text.assemble((str(c.input), "bold"), " ", c.input_label), "→",
                      Text.assemble((str(c.output), "bold"), " ", c.output_label),
                      f"{c.strength:.3g}", f"{c.mean_abs:.3g}", f"{c.mean:+.3g}", f"{c.count:,}")
    return table


def _title(n: int, inputs, outputs) -> str:
    which = "".join(f", {side} latent{'s' * (len(ids) > 1)} {', '.join(map(str, ids))} only"
                    for side, ids in (("input", inputs), ("output", outputs)) if ids)
    return f"top {n} connections{which}: input latent → output latent (strength = Σ|J| / tokens)"


def histogram(result, width: int = 40) -> Text:
    edges, counts = result.histogram
    text = Text("histogram of |J| (non-zero entries, log scale)\n")
    total = counts.sum()
    if total == 0:
        return text.append("  (no non-zero entries)\n")
    shown = np.flatnonzero(counts >= 0.001 * total)  # trim the near-empty tails
    lo, hi = shown[0], shown[-1]
    peak = counts.max()
    for i in range(lo, hi + 1):
        left = "0" if i == 0 else f"{edges[i - 1]:.0e}"
        right = "∞" if i >= len(edges) else f"{edges[i]:.0e}"
        bar = "█" * int(round(width * counts[i] / peak))
        text.append(f"  {left:>6} – {right:<6} ").append(bar, style="cyan").append(f" {counts[i] / total:.1%}\n")
    return text


def render(result) -> None:
    err.print(sparsity_table(result))
    if result.linearity:
        lin = result.linearity
        err.print(f"f_s over {lin['pairs']} sampled active pairs: linear {lin['linear']:.0%}, JumpReLU-like "
                  f"{lin['jumprelu']:.0%}, other {lin['other']:.0%}; ablation agrees with J (within "
                  f"{lin['agree_within']}) for {lin['ablation_agree']:.1%} of {lin['ablation_checks']:,} checks "
                  f"({lin['ablation_agree_topk_kept']:.1%} of the {lin['ablation_topk_kept']:.0%} where TopK kept its latents)")
    err.print(histogram(result))
    only = result.details.get("filter") or {}
    err.print(connections_table(result.top, _title(len(result.top), only.get("input"), only.get("output"))))


@from_config(JacobianConfig)
def jacobian_cmd(cfg: JacobianConfig, json_out: JsonOpt = False, config: ConfigOpt = None) -> None:
    from jsaectl.jacobian import jacobian

    result = jacobian(cfg, RichReporter())
    render(result)
    emit(result.store, result.summary(), json_out)
