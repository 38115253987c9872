"""Train a JSAE (two TopK SAEs with a Jacobian L1 penalty) on an activations store.

ACTS is the store printed by `jsaectl harvest` (or read from stdin). Prints the URL of the
jsae store it writes. Multi-GPU: torchrun --nproc-per-node N -m jsaectl train ACTS ...

Re-run an interrupted run with --resume (the same options, or just --resume --out STORE).
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from jsaectl.cli._common import RichReporter, emit, err
from jsaectl.cli._generate import from_config, parsed
from jsaectl.configs import TrainConfig
from jsaectl.options import Outputs


def _summary_table(metrics: dict[str, float], k: int, tokens_per_second: float) -> Table:
    table = Table(title="final training metrics (last logged batch)", title_justify="left")
    table.add_column("metric")
    table.add_column("input SAE (x)", justify="right")
    table.add_column("output SAE (y)", justify="right")
    for label, key, fmt in (("explained variance", "ev", "{:.3f}"), ("FVU", "fvu", "{:.3f}"), ("L0", "l0", "{:.1f}"),
                            ("MSE", "mse", "{:.4g}"), ("dead latents", "dead", "{:.1%}")):
        if f"{key}_in" in metrics:
            table.add_row(label, fmt.format(metrics[f"{key}_in"]), fmt.format(metrics[f"{key}_out"]))
    if "j_count" in metrics:
        count = metrics["j_count"]
        table.add_row("|J| > 0.01 per token", f"{count:.1f} of {k * k} ({count / (k * k):.1%})", "")
        table.add_row("mean |J|", f"{metrics['jac_l1']:.4g}", "")
    table.add_row("throughput", f"{tokens_per_second:,.0f} tokens/s", "")
    if "data_wait" in metrics:
        table.add_row("data wait", f"{metrics['data_wait']:.0%} of the time", "")
    return table


def _resume_from_store(ctx: typer.Context, given: dict[str, Any]) -> Any:
    """`--resume --out STORE` with no ACTS: the run's own options, with only those given on the
    command line (or in --config) changed."""
    if not (given.get("resume") and given.get("out") and not given.get("acts")):
        return None
    from jsaectl.train import resume_config

    named = {name for name in given if ctx.get_parameter_source(name).name in ("COMMANDLINE", "DEFAULT_MAP")}
    return resume_config(given["out"], parsed(TrainConfig, given, only=named - {"out", "resume", "acts"}))


@from_config(TrainConfig, build_with=_resume_from_store)
def train_cmd(ctx: typer.Context, cfg: TrainConfig, out: Outputs) -> None:
    from jsaectl.train import train

    result = train(cfg, RichReporter())
    if result.metrics:
        err.print(_summary_table(result.metrics, cfg.k, result.tokens_per_second))
    emit(result.store, result.summary(), out.json)
