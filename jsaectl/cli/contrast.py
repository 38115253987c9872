"""Which input and output latents fire on text A far more than on text B, and which input latents compute those output latents.

JSAE is a jsae store, or a jacobian store (whose labels and connections are used; read from stdin when missing). --a and --b are SOURCEs: whatever harvest --dataset accepts, or SOURCE:key=value,… to keep documents by their labels — on the bundled corpus, German against English is `--a jsaectl-sample:lang=de --b jsaectl-sample:lang=en`. For each latent: its firing rate and mean activation on A and B, ranked by the lower 95% bound of the log odds ratio of firing on A rather than B (so a latent seen on three tokens does not come first). The tables go to stdout (--json for scripts).
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from jsaectl.cli._common import RichReporter, out_console
from jsaectl.cli._generate import from_config
from jsaectl.cli.tables import latent, table
from jsaectl.configs import ContrastConfig
from jsaectl.options import Outputs


def latents_table(items: list, side: str, result) -> Table:
    a, b = result.a["described"], result.b["described"]
    out = table(f"{'input' if side == 'in' else 'output'} latents that fire on A ({a}) far more than on B ({b}): "
                "rate = share of tokens where active, mean = mean activation where active",
                (("#", "right"), ("latent", "left"), ("rate A", "right"), ("rate B", "right"), ("mean A", "right"),
                 ("mean B", "right"), ("active on A / B", "right"), ("log OR", "right"), ("95% low", "right")))
    for rank, x in enumerate(items, 1):
        out.add_row(str(rank), latent(x.latent, x.label), f"{x.rate_a:.2%}", f"{x.rate_b:.2%}", f"{x.mean_a:.3g}",
                    f"{x.mean_b:.3g}", f"{x.count_a:,} / {x.count_b:,}", f"{x.log_odds:+.2f}", f"{x.lower:+.2f}")
    return out


def computed_by_table(result) -> Table:
    out = table(f"what computes each of them (from {result.computed_by}; strength = Σ|J| / tokens)",
                (("output latent", "left"), ("", "center"), ("input latent", "left"), ("strength", "right"),
                 ("mean J", "right"), ("tokens", "right")))
    for o in result.outputs:
        for i, c in enumerate(o.computed_by):
            out.add_row(latent(o.latent, o.label) if i == 0 else Text(""), "←", latent(c["input"], c["label"]),
                        f"{c['strength']:.3g}", f"{c['mean_J']:+.3g}", f"{c['tokens']:,}")
        out.add_section()
    return out


@from_config(ContrastConfig)
def contrast_cmd(cfg: ContrastConfig, out: Outputs) -> None:
    import json
    import sys

    from jsaectl.contrast import contrast

    result = contrast(cfg, RichReporter())
    if out.json:
        sys.stdout.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
        return
    console = out_console()
    console.print(f"A: {result.a['described']}, {result.a['tokens']:,} tokens; B: {result.b['described']}, "
                  f"{result.b['tokens']:,} tokens; ranked by the {result.statistic}", markup=False, soft_wrap=True)
    console.print(latents_table(result.outputs, "out", result))
    console.print(computed_by_table(result))
    console.print(latents_table(result.inputs, "in", result))
