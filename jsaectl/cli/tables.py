"""The tables and charts of the Jacobian analysis, rendered in one place: the sparsity summary
and the |J| histogram (jacobian), and the connections table (jacobian, connections); and the
two pieces every table of latents is made of (:func:`table`, :func:`latent`)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text


def table(title: str, columns: tuple[tuple[str, str], ...]) -> Table:
    """A table of ``(name, justify)`` columns whose long cells fold rather than cut."""
    out = Table(title=title, title_justify="left")
    for name, justify in columns:
        out.add_column(name, justify=justify, overflow="fold")
    return out


def latent(latent_id: int, label: str) -> Text:
    """A latent as tables show it: its id in bold, then its label (token text, never markup)."""
    return Text.assemble((str(latent_id), "bold"), " ", label)


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
    out = table(title, (("#", "right"), ("input latent", "left"), ("", "center"), ("output latent", "left"),
                        ("strength", "right"), ("mean |J|", "right"), ("mean J", "right"), ("tokens", "right")))
    for rank, c in enumerate(connections, 1):
        out.add_row(str(rank), latent(c.input, c.input_label), "→", latent(c.output, c.output_label),
                    f"{c.strength:.3g}", f"{c.mean_abs:.3g}", f"{c.mean:+.3g}", f"{c.count:,}")
    return out


def connections_title(n: int, inputs=(), outputs=()) -> str:
    which = "".join(f", {side} latent{'s' * (len(ids) > 1)} {', '.join(map(str, ids))} only"
                    for side, ids in (("input", inputs), ("output", outputs)) if ids)
    return f"top {n} connections{which}: input latent → output latent (strength = Σ|J| / tokens)"


def histogram(result, width: int = 40) -> Text:
    edges, counts = result.histogram
    text = Text("histogram of |J| (non-zero entries, log scale)\n")
    total = counts.sum()
    if total == 0:
        return text.append("  (no non-zero entries)\n")
    import numpy as np  # here: the CLI starts without numpy

    shown = np.flatnonzero(counts >= 0.001 * total)  # trim the near-empty tails
    lo, hi = shown[0], shown[-1]
    peak = counts.max()
    for i in range(lo, hi + 1):
        left = "0" if i == 0 else f"{edges[i - 1]:.0e}"
        right = "∞" if i >= len(edges) else f"{edges[i]:.0e}"
        bar = "█" * int(round(width * counts[i] / peak))
        text.append(f"  {left:>6} – {right:<6} ").append(bar, style="cyan").append(f" {counts[i] / total:.1%}\n")
    return text
