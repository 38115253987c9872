"""Compare JSAE runs side by side: reconstruction, CE/KL scores of splicing each SAE into
the model, and Jacobian sparsity — one column per run.

STORES are jsae stores (or jacobian stores, standing for the JSAE they were made from), as
arguments or one per line on stdin. compare writes no store: the table goes to stdout
(--json or --csv for scripts); --plot FILE.png draws the sparsity / CE-score trade-off.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from typing import Any

from rich.table import Table

from jsaectl.cli._common import RichReporter, err, out_console
from jsaectl.cli._generate import from_config
from jsaectl.configs import CompareConfig
from jsaectl.errors import JsaectlError
from jsaectl.options import Outputs
from jsaectl.tracking import describe_run

_ROWS = [
    ("reconstruction", None, None),
    ("explained variance, input SAE", "ev_in", "{:.3f}"),
    ("explained variance, output SAE", "ev_out", "{:.3f}"),
    ("FVU, input SAE", "fvu_in", "{:.3f}"),
    ("FVU, output SAE", "fvu_out", "{:.3f}"),
    ("L0, input / output", ("l0_in", "l0_out"), "{:.1f}"),
    ("dead latents, input / output", ("dead_in", "dead_out"), "{:.1%}"),
    ("splicing into the model", None, None),
    ("CE-loss score, input SAE", "ce_score_in", "{:.3f}"),
    ("CE-loss score, output SAE", "ce_score_out", "{:.3f}"),
    ("KL score, input SAE", "kl_score_in", "{:.3f}"),
    ("KL score, output SAE", "kl_score_out", "{:.3f}"),
    ("CE clean / zero-ablated", ("ce_clean", "ce_zero"), "{:.3f}"),
    ("Jacobian", None, None),
    ("mean |J|", "mean_abs_j", "{:.3g}"),
]


def _cell(values: dict, key, fmt: str) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    parts = []
    for k in keys:
        v = values.get(k)
        parts.append("–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
    return " / ".join(parts)


def _rows(cfg) -> list[tuple[str, Any, str | None]]:
    """Every row of the table, in order: (label, key or keys, format; None: count (fraction))."""
    rows = list(_ROWS)
    for th in sorted(cfg.thresholds):
        rows.append((f"|J| > {th:g} per token (of k²)", (f"j>{th:g}", f"j>{th:g}_frac"), None))
    rows.append(("scale-free", None, None))
    for m in sorted(cfg.normalised_thresholds):
        rows.append((f"|J| > {m:g} × the token's rms |J|", (f"j>{m:g}rms", f"j>{m:g}rms_frac"), None))
    rows.append(("entries holding 90% of Σ|J|", ("j_mass90", "j_mass90_frac"), None))
    rows.append(("Gini coefficient of |J|", "j_gini", "{:.3f}"))
    return rows


def table(results, cfg) -> Table:
    t = Table(title="jsaectl compare", title_justify="left")
    t.add_column("metric")
    for r in results:
        t.add_column(r.name, justify="right")
    for label, key, fmt in _rows(cfg):
        if key is None:
            t.add_row(f"[bold]{label}[/]", *[""] * len(results))
        elif fmt is None:  # count (fraction)
            t.add_row(label, *[f"{r.values[key[0]]:.1f} ({r.values[key[1]]:.1%})" for r in results])
        else:
            t.add_row(label, *[_cell(r.values, key, fmt) for r in results])
    t.add_row("tokens (reconstruction / CE)", *[f"{r.values['tokens']:,} / {int(r.values.get('eval_tokens', 0)):,}" for r in results])
    if any(r.info.get("wandb") for r in results):  # the run each JSAE was trained in (train --wandb)
        t.add_row("W&B run", *[describe_run(r.info.get("wandb")) for r in results])
    return t


def csv_keys(results, cfg) -> list[str]:
    """The metric columns of --csv: the table's order, then anything else, alphabetically."""
    ordered = [k for _, key, _ in _rows(cfg) if key is not None for k in (key if isinstance(key, tuple) else (key,))]
    ordered += ["tokens", "eval_tokens"]
    rest = sorted({k for r in results for k in r.values} - set(ordered))
    return [k for k in ordered if any(k in r.values for r in results)] + rest


def _pyplot():
    """matplotlib's pyplot (drawing to files), or one line saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise JsaectlError("--plot needs matplotlib, which is not installed", hint="pip install 'jsaectl[plot]'") from None
    return plt


def plot(results, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for side, marker in (("out", "o"), ("in", "s")):
        xs = [r.values.get(f"ce_score_{side}", math.nan) for r in results]
        ys = [r.values["j>0.01_frac"] * 100 for r in results]
        ax.plot(xs, ys, marker=marker, linestyle="none", label=f"{side}put SAE spliced in")
        for x, y, r in zip(xs, ys, results):
            ax.annotate(f"λ={r.info['lam']:g}" + (" rand" if r.info.get("random_init") else ""), (x, y),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("CE-loss score (1 = as good as the real MLP)")
    ax.set_ylabel("% of |J| > 0.01 (of k² per token)")
    ax.set_title("Jacobian sparsity vs reconstruction quality")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


@from_config(CompareConfig)
def compare_cmd(cfg: CompareConfig, out: Outputs) -> None:
    from dataclasses import replace

    from jsaectl.compare import compare

    plot_path = out.plot
    if plot_path:
        if 0.01 not in cfg.thresholds:  # the plot's y axis is the paper's |J| > 0.01
            cfg = replace(cfg, thresholds=tuple(sorted((*cfg.thresholds, 0.01))))
        _pyplot()  # fail before minutes of work, not after
    results, notes = compare(cfg, RichReporter())
    for note in notes:
        err.print(f"[yellow]note:[/] {note}")
    if plot_path:
        plot(results, plot_path)
        err.print(f"trade-off plot written to {plot_path}")
    if out.json:
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731  (JSON has no NaN: null)
        sys.stdout.write(json.dumps([{"store": r.store, "name": r.name, **r.info, **{k: clean(v) for k, v in r.values.items()}}
                                     for r in results]) + "\n")
    elif out.csv:
        keys = csv_keys(results, cfg)
        writer = csv.writer(sys.stdout)
        writer.writerow(["store", "name", "lam", "k", "model", "layer", "random_init", "wandb_run", *keys])
        for r in results:
            run = describe_run(r.info.get("wandb")) if r.info.get("wandb") else ""
            writer.writerow([r.store, r.name, r.info["lam"], r.info["k"], r.info["model"], r.info["layer"], r.info["random_init"],
                             run, *[r.values.get(k, "") for k in keys]])
    else:
        out_console().print(table(results, cfg))
