"""Show the contexts where latents (or a connection) of a JSAE are most active.

JSAE is the store printed by `jsaectl train` (or read from stdin). Give one of --latent,
--connection or --top-latents. Each example shows the text around the token, the token in
bold, every token shaded by the latent's activation there, and the values beside.

maxact writes no store: its result goes to stdout (plain text when piped; --json for scripts).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.text import Text

from jsaectl.cli._common import out_console, ConfigOpt, DeviceOpt, JsonOpt, RichReporter, store_from_arg
from jsaectl.errors import ConfigError
from jsaectl.units import parse_count


def _connection(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        a, b = (int(p) for p in text.split(":"))
    except ValueError:
        raise ConfigError(f"--connection must look like IN:OUT (two latent ids), not {text!r}") from None
    return a, b


def _shade(value: float, peak: float) -> Style:
    level = 0.0 if peak <= 0 else max(0.0, min(1.0, value / peak))
    if level == 0:
        return Style()
    # from the terminal's background towards orange as the activation grows
    return Style(bgcolor=Color.from_rgb(40 + 200 * level, 40 + 100 * level, 40), color="black" if level > 0.5 else None)


def render_example(example, peak: float, plain: bool = False) -> Text:
    """One example line; ``plain`` (no colours, e.g. piped) marks the token with brackets."""
    line = Text(f"{example.rank:>3}. {example.activation:8.3g}  ")
    for i, (token, value) in enumerate(zip(example.tokens, example.activations)):
        token = token.replace("\n", "⏎")
        if plain and i == example.focus:
            token = f"[{token}]"
        style = _shade(value, peak) + (Style(bold=True, underline=True) if i == example.focus else Style())
        line.append(token, style=style)
    if example.extra:
        line.append("   " + "  ".join(f"{k}={v:.3g}" for k, v in example.extra.items()), style="dim")
    return line


def render(result, console: Console) -> None:
    for item in result.latents:
        title = f"connection {item.latent}" if item.side == "connection" else \
            f"{'input' if item.side == 'in' else 'output'} SAE latent {item.latent}"
        console.print(Text(title, style="bold"), Text(f" — {item.label}; active on "
                      f"{item.count:,} of {result.n_tokens:,} tokens", style="dim"), soft_wrap=True)
        peak = max((max(e.activations) for e in item.examples if e.activations), default=0.0)
        plain = not console.is_terminal or console.no_color
        for example in item.examples:
            console.print(render_example(example, peak, plain), soft_wrap=True)
        if not item.examples:
            console.print("    (never active in the scanned tokens)", style="dim")
        console.print()


def maxact_cmd(
    jsae: Annotated[str | None, typer.Argument(help="JSAE store (path or URL); read from stdin when missing or -.", show_default=False)] = None,
    side: Annotated[str, typer.Option("--side", help="Which SAE --latent / --top-latents refer to: in (MLP input) or out (MLP output).")] = "in",
    latent: Annotated[list[int] | None, typer.Option("--latent", help="Latent id (repeat for several).", show_default=False)] = None,
    connection: Annotated[str | None, typer.Option("--connection", help="IN:OUT — tokens where input latent IN and output latent OUT both fire.", show_default=False)] = None,
    top_latents: Annotated[int, typer.Option("--top-latents", help="Show the N latents of --side with the largest total activation.")] = 0,
    rank_by: Annotated[str, typer.Option("--rank-by", help="For --connection: rank by |J| (jacobian) or by the product of the activations (product).")] = "jacobian",
    examples: Annotated[int, typer.Option("--examples", help="Examples per latent.")] = 10,
    context: Annotated[int, typer.Option("--context", help="Tokens shown on each side of an example.")] = 8,
    tokens: Annotated[str | None, typer.Option("--tokens", "-n", help="Scan the first N tokens only. Default: the whole store.", show_default=False)] = None,
    acts: Annotated[str | None, typer.Option("--acts", help="Scan this activations store instead of the JSAE's own.", show_default=False)] = None,
    include_bos: Annotated[bool, typer.Option("--include-bos", help="Include the BOS token that starts each context (skipped by default: its activations are outliers).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Tokens per batch.")] = 4096,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    import json
    import sys

    from jsaectl.maxact import MaxactConfig, maxact

    cfg = MaxactConfig(
        jsae=store_from_arg(jsae), side=side, latents=tuple(latent or ()), connection=_connection(connection),
        top_latents=top_latents, rank_by=rank_by, examples=examples, context=context,
        tokens=parse_count(tokens, "--tokens") if tokens else None, acts=acts, include_bos=include_bos, batch_size=batch_size, device=device,
    )
    result = maxact(cfg, RichReporter())
    if json_out:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    else:
        render(result, out_console())
