"""What fires, and what computes what, on a text you give: the JSAE's active latents and Jacobian, token by token.

JSAE is a jsae store, or a jacobian store (whose labels are used; read from stdin when missing). The text comes from --text "…", --file F, or --text - (stdin). It is tokenized by the model of the JSAE's activations, cut into contexts as harvest cuts text (BOS first), and run through the model to layer L's MLP input and through the JSAE. Prints, per token, its strongest input and output latents and J entries, and over the whole text the connections ranked by Σ|J| with the tokens where each acts (--json for scripts, --html FILE for a page to explore).
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from jsaectl.cli._common import RichReporter, err, out_console
from jsaectl.cli._generate import from_config
from jsaectl.cli.tables import latent, table
from jsaectl.configs import TraceConfig
from jsaectl.errors import ConfigError
from jsaectl.options import Outputs

LABEL = 22  # characters of a label shown in the per-token table


def _text_on_stdin(ctx: typer.Context, given: dict[str, Any]) -> Any:
    """`--text -` takes stdin, so the JSAE cannot come from there too: said before stdin is read."""
    if given.get("text") == "-" and given.get("jsae") in (None, "", "-"):
        raise ConfigError("--text - reads the text from stdin, so the JSAE must be given as an argument",
                          hint="jsaectl trace JSAE --text - < notes.txt")
    return None


def _latents(items: list) -> Text:
    text = Text()
    for x in items:
        label = x.label if len(x.label) <= LABEL else x.label[: LABEL - 1] + "…"
        text.append(f"{x.latent}", style="bold").append(f" {x.activation:.2g} ").append(label + "\n", style="dim")
    return text


def tokens_table(result) -> Table:
    out = table(f"{result.n_tokens} tokens: active latents and strongest J entries (labels {result.labels})",
                (("#", "right"), ("token", "left"), ("input latents", "left"), ("output latents", "left"),
                 ("strongest J (in → out)", "left")))
    for t in result.tokens:
        entries = Text("\n".join(f"{e.input} → {e.output} {e.J:+.3g}" for e in t.entries))
        out.add_row(str(t.position), Text(repr(t.token)), _latents(t.inputs), _latents(t.outputs), entries)
    return out


def links_table(result) -> Table:
    out = table("connections over the whole text, strongest Σ|J| first",
                (("#", "right"), ("input latent", "left"), ("", "center"), ("output latent", "left"),
                 ("Σ|J|", "right"), ("mean J", "right"), ("tokens", "right"), ("where it acts most", "left")))
    for rank, c in enumerate(result.connections, 1):
        where = ", ".join(f"{w['token']!r} {w['J']:+.2g}" for w in c.tokens[:4])
        out.add_row(str(rank), latent(c.input, c.input_label), "→", latent(c.output, c.output_label),
                    f"{c.sum_abs:.3g}", f"{c.mean:+.3g}", f"{c.count:,}", Text(where))
    return out


@from_config(TraceConfig, build_with=_text_on_stdin)
def trace_cmd(cfg: TraceConfig, out: Outputs) -> None:
    import json
    import sys

    from jsaectl.trace import read_text, trace, write_html

    result = trace(cfg, read_text(cfg), RichReporter())
    if out.html:
        write_html(result, out.html)
        err.print(f"trace page written to {out.html}", markup=False)
    if out.json:
        sys.stdout.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
        return
    console = out_console()
    console.print(tokens_table(result))
    console.print(links_table(result))
