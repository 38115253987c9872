"""Show the contexts where latents (or a connection) of a JSAE are most active.

JSAE is a jsae store, or a jacobian store made from it, answered from the examples it keeps
without a scan (read from stdin when missing). Give one of --latent, --connection or --top-latents. Each example shows the text around the token, the token in
bold, every token shaded by the latent's activation there, and the values beside.

maxact writes no store: its result goes to stdout (plain text when piped; --json for scripts).
"""

from __future__ import annotations

from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.text import Text

from jsaectl.cli._common import RichReporter, err, out_console
from jsaectl.cli._generate import from_config
from jsaectl.configs import MaxactConfig
from jsaectl.options import Outputs


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


@from_config(MaxactConfig)
def maxact_cmd(cfg: MaxactConfig, out: Outputs) -> None:
    import json
    import sys

    from jsaectl.maxact import maxact

    result = maxact(cfg, RichReporter())
    err.print(f"examples from {result.source}", markup=False, highlight=False)
    if out.json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    else:
        render(result, out_console())
